"""Tests for model/transforms.py: the sampling facts of docs/design.md §2.1 and §2.2.

Synthetic videos encode (frame, row, col) in their pixel values so every output pixel can be traced
back to where it was sampled from.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.transforms import (
    MEAN,
    STD,
    _upsampled_size,
    apply_guardian_map,
    continuous_sample_indices,
    grid_fragments,
    guardian_map,
    normalize,
    resize_frames,
    skip_sample_indices,
    to_cthw,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- helpers


def encoded_video(t: int, h: int, w: int) -> torch.Tensor:
    """uint8 (3,T,H,W) whose pixels encode (t, row, col) exactly; needs T <= 64, H, W <= 512."""
    assert t <= 64 and h <= 512 and w <= 512
    tt = torch.arange(t).view(t, 1, 1).expand(t, h, w)
    rr = torch.arange(h).view(1, h, 1).expand(t, h, w)
    cc = torch.arange(w).view(1, 1, w).expand(t, h, w)
    ch2 = tt + 64 * (rr // 256) + 128 * (cc // 256)
    return torch.stack([rr % 256, cc % 256, ch2]).to(torch.uint8)


def decode(pixel: torch.Tensor) -> tuple[int, int, int]:
    """(t, row, col) from one encoded pixel (3,)."""
    a, b, c = (int(v) for v in pixel)
    return c & 63, a + 256 * ((c >> 6) & 1), b + 256 * (c >> 7)


def patch_origins(out: torch.Tensor, video: torch.Tensor, patch: int = 32, grid: int = 7):
    """Decode where each patch of `out` came from and check it is an exact contiguous crop.

    Returns a LongTensor (T, grid, grid, 2) of (row, col) top-left corners in `video`.
    """
    _, t, _, _ = out.shape
    origins = torch.empty((t, grid, grid, 2), dtype=torch.long)
    for f in range(t):
        for i in range(grid):
            for j in range(grid):
                p = out[:, f, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch]
                src_t, r, c = decode(p[:, 0, 0])
                assert src_t == f, "patch taken from the wrong frame"
                assert torch.equal(p, video[:, f, r : r + patch, c : c + patch]), "not a crop"
                origins[f, i, j, 0], origins[f, i, j, 1] = r, c
    return origins


def check_inside_cells(origins: torch.Tensor, h: int, w: int, patch: int = 32, grid: int = 7):
    """Every crop lies in [cell_start, cell_start + max(cell - patch, 1)) on both axes."""
    ch, cw = h // grid, w // grid
    for i in range(grid):
        r0 = min(i * ch, h - patch)
        rows = origins[:, i, :, 0]
        assert (rows >= r0).all() and (rows < r0 + max(ch - patch, 1)).all()
    for j in range(grid):
        c0 = min(j * cw, w - patch)
        cols = origins[:, :, j, 1]
        assert (cols >= c0).all() and (cols < c0 + max(cw - patch, 1)).all()


def match_crops(out: torch.Tensor, ref: torch.Tensor, patch: int = 32, grid: int = 7):
    """For non-encoded (upsampled) frames: every patch must equal some crop of `ref` inside its cell, to
    within one level (fragments interpolate only the pixels they read, with float32 rounding that can
    flip an exact .5 the other way than `F.interpolate`'s vectorised kernel).

    Returns the (T, grid, grid, 2) corners found (first match).
    """
    _, t, h, w = ref.shape
    ch, cw = h // grid, w // grid
    origins = torch.empty((t, grid, grid, 2), dtype=torch.long)
    for f in range(t):
        for i in range(grid):
            r0 = min(i * ch, h - patch)
            for j in range(grid):
                c0 = min(j * cw, w - patch)
                p = out[:, f, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch]
                found = None
                for dr in range(max(ch - patch, 1)):
                    for dc in range(max(cw - patch, 1)):
                        r, c = r0 + dr, c0 + dc
                        if (p.int() - ref[:, f, r : r + patch, c : c + patch].int()).abs().max() <= 1:
                            found = (r, c)
                            break
                    if found:
                        break
                assert found is not None, f"patch ({i},{j}) of frame {f} is no crop of its cell"
                origins[f, i, j, 0], origins[f, i, j, 1] = found
    return origins


def ramp_video(t: int, h: int, w: int) -> torch.Tensor:
    """Smooth uint8 (3,T,H,W) with distinct rows/cols so crops of its upsampling are locatable."""
    rr = torch.linspace(0, 250, h).view(1, h, 1).expand(t, h, w)
    cc = torch.linspace(0, 250, w).view(1, 1, w).expand(t, h, w)
    tt = (torch.arange(t) * 7 % 256).view(t, 1, 1).expand(t, h, w).float()
    return torch.stack([rr, cc, tt]).round().to(torch.uint8)


def upsample_ref(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Independent reference: bilinear upsampling of a (3,T,H,W) clip to `size`, back to uint8."""
    x = F.interpolate(video.transpose(0, 1).float(), size=size, mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).transpose(0, 1)


# ----------------------------------------------------------------------------- to_cthw / errors


def test_to_cthw_layouts_and_errors():
    v = torch.zeros(3, 4, 5, 6, dtype=torch.uint8)
    assert to_cthw(v, "CTHW") is v
    assert torch.equal(to_cthw(v.permute(1, 2, 3, 0), "THWC"), v)
    with pytest.raises(ValueError, match="layout"):
        to_cthw(v, "TCHW")
    with pytest.raises(ValueError, match="4-D"):
        to_cthw(v[0], "CTHW")
    with pytest.raises(ValueError, match="channels"):
        to_cthw(v, "THWC")  # a CTHW clip declared THWC has 6 "channels"
    with pytest.raises(ValueError, match="empty"):
        to_cthw(torch.zeros(3, 0, 5, 6, dtype=torch.uint8), "CTHW")
    with pytest.raises(ValueError, match="Tensor"):
        to_cthw([[1]], "CTHW")


# ----------------------------------------------------------------------------- skip sampling


@pytest.mark.parametrize("n", [1, 2, 20, 31, 32, 40, 63, 64, 65, 100, 129, 1000])
@pytest.mark.parametrize("clips", [1, 4])
def test_skip_indices_shape_and_range(n, clips):
    idx = skip_sample_indices(n, num_clips=clips, generator=gen(n))
    assert idx.dtype == torch.long and idx.shape == (clips, 32)
    assert idx.min() >= 0 and idx.max() < n


def test_skip_spacing_two_for_long_video():
    for seed in range(20):
        idx = skip_sample_indices(1000, generator=gen(seed))
        assert (idx.diff(dim=1) == 2).all()


@pytest.mark.parametrize("n", [1, 3, 20, 40, 63, 64, 65])
def test_skip_short_videos_wrap(n):
    # L = N <= 65 leaves offset 0 (range [0, 1) at N = 65); frame k = 2k mod N.
    for seed in range(5):
        idx = skip_sample_indices(n, generator=gen(seed))
        assert torch.equal(idx[0], (2 * torch.arange(32)) % n)


def test_skip_fewer_frames_than_clips_all_start_at_zero():
    idx = skip_sample_indices(3, num_clips=4, generator=gen())
    assert torch.equal(idx, ((2 * torch.arange(32)) % 3).expand(4, 32))


def test_skip_multi_clip_offsets_within_parts():
    n, clips = 1000, 4
    part = n // clips  # 250, offsets in [0, 186)
    seen = [set() for _ in range(clips)]
    g = gen(1)
    for _ in range(200):
        idx = skip_sample_indices(n, num_clips=clips, generator=g)
        for i in range(clips):
            off = int(idx[i, 0]) - i * part
            assert 0 <= off < part - 64
            assert (idx[i] >= i * part).all() and (idx[i] < (i + 1) * part).all()
            assert (idx[i].diff() == 2).all()
            seen[i].add(off)
    assert all(len(s) > 50 for s in seen)  # clips draw their own offsets


def test_skip_offset_covers_its_range():
    # N = 74: L - span = 10, offsets uniform in {0..9}.
    g = gen(2)
    offs = [int(skip_sample_indices(74, generator=g)[0, 0]) for _ in range(400)]
    assert set(offs) == set(range(10))
    counts = torch.bincount(torch.tensor(offs), minlength=10)
    assert counts.min() > 15  # roughly uniform (expected 40 each)


def test_skip_fresh_and_replay():
    g = gen(3)
    a = skip_sample_indices(5000, num_clips=4, generator=g)
    b = skip_sample_indices(5000, num_clips=4, generator=g)
    assert not torch.equal(a, b)
    c = skip_sample_indices(5000, num_clips=4, generator=gen(3))
    assert torch.equal(a, c)


def test_skip_custom_interval():
    idx = skip_sample_indices(10, clip_len=4, frame_interval=3, generator=gen())
    assert torch.equal(idx, torch.tensor([[0, 3, 6, 9]]))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_frames=0),
        dict(num_frames=-5),
        dict(num_frames=10, clip_len=0),
        dict(num_frames=10, frame_interval=0),
        dict(num_frames=10, num_clips=0),
        dict(num_frames=10.0),
    ],
)
def test_skip_errors(kwargs):
    n = kwargs.pop("num_frames")
    with pytest.raises(ValueError):
        skip_sample_indices(n, generator=gen(), **kwargs)


# ----------------------------------------------------------------------------- continuous sampling


def test_continuous_exact_multiple():
    idx = continuous_sample_indices(512)
    assert idx.dtype == torch.long and torch.equal(idx, torch.arange(512).view(16, 32))


def test_continuous_rate_and_start():
    idx = continuous_sample_indices(1000)  # rate 62
    expected = torch.arange(16)[:, None] * 62 + torch.arange(32)
    assert torch.equal(idx, expected)


def test_continuous_repeats_last_frame():
    idx = continuous_sample_indices(100)  # rate 6; segment 15 covers 90..121
    assert idx.max() == 99
    assert torch.equal(idx[15], torch.tensor(list(range(90, 100)) + [99] * 22))
    assert torch.equal(idx[0], torch.arange(32))


def test_continuous_very_short_video():
    idx = continuous_sample_indices(10)  # rate 0: every segment is 0..9 then 9s
    row = torch.tensor(list(range(10)) + [9] * 22)
    assert torch.equal(idx, row.expand(16, 32))
    assert torch.equal(continuous_sample_indices(1), torch.zeros(16, 32, dtype=torch.long))


def test_continuous_errors():
    with pytest.raises(ValueError):
        continuous_sample_indices(0)
    with pytest.raises(ValueError):
        continuous_sample_indices(10, num_segments=0)
    with pytest.raises(ValueError):
        continuous_sample_indices(10, segment_len=0)


# ----------------------------------------------------------------------------- fragments


def test_fragments_identity_at_224():
    v = torch.randint(0, 256, (3, 8, 224, 224), dtype=torch.uint8, generator=gen())
    out = grid_fragments(v, generator=gen())
    assert out.dtype == torch.uint8 and out.shape == (3, 8, 224, 224)
    assert torch.equal(out, v)  # cells of exactly 32: no offsets, the grid tiles the frame


@pytest.mark.parametrize("h,w", [(320, 320), (256, 400), (400, 224), (224, 400), (300, 500)])
def test_fragments_are_crops_inside_cells(h, w):
    v = encoded_video(8, h, w)
    out = grid_fragments(v, generator=gen(h + w))
    assert out.shape == (3, 8, 224, 224) and out.dtype == torch.uint8
    origins = patch_origins(out, v)
    check_inside_cells(origins, h, w)


def test_fragments_aligned_within_block_independent_across_blocks():
    v = encoded_video(64, 320, 320)
    out = grid_fragments(v, generator=gen(5))
    origins = patch_origins(out, v)
    first, second = origins[:32], origins[32:]
    assert (first == first[0]).all() and (second == second[0]).all()  # aligned in time
    assert not torch.equal(first[0], second[0])  # fresh offsets per block
    # per cell independence: with 13 possible row offsets, many cells must differ between blocks
    assert (first[0] != second[0]).any(dim=-1).sum() > 30


def test_fragments_partial_last_block():
    v = encoded_video(40, 320, 320)
    origins = patch_origins(grid_fragments(v, generator=gen(6)), v)
    assert (origins[32:] == origins[32]).all() and (origins[:32] == origins[0]).all()


def test_fragments_align_parameter():
    v = encoded_video(8, 320, 320)
    origins = patch_origins(grid_fragments(v, generator=gen(7), align=2), v)
    for b in range(4):
        assert (origins[2 * b : 2 * b + 2] == origins[2 * b]).all()
    assert len({tuple(origins[2 * b].flatten().tolist()) for b in range(4)}) == 4


def test_fragments_offsets_cover_range():
    v = encoded_video(1, 320, 320)  # cell 45: offsets in [0, 13) on both axes
    g = gen(8)
    rows, cols = set(), set()
    for _ in range(20):
        o = patch_origins(grid_fragments(v, generator=g), v)[0]
        starts = torch.arange(7) * 45
        rows |= set((o[..., 0] - starts[:, None]).flatten().tolist())
        cols |= set((o[..., 1] - starts[None, :]).flatten().tolist())
    assert rows == set(range(13)) and cols == set(range(13))


def test_fragments_fresh_and_replay():
    v = encoded_video(8, 320, 320)
    g = gen(9)
    a, b = grid_fragments(v, generator=g), grid_fragments(v, generator=g)
    assert not torch.equal(a, b)
    assert torch.equal(a, grid_fragments(v, generator=gen(9)))


def test_fragments_layouts_identical():
    v = encoded_video(40, 300, 500)
    a = grid_fragments(v, generator=gen(10), layout="CTHW")
    b = grid_fragments(v.permute(1, 2, 3, 0).contiguous(), generator=gen(10), layout="THWC")
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "h,w,expected",
    [
        (48, 64, (224, 299)),
        (64, 48, (299, 224)),
        (48, 85, (224, 397)),
        (85, 48, (397, 224)),
        (100, 100, (224, 224)),
        (400, 200, (448, 224)),
        (200, 400, (224, 448)),
        (67, 200, (224, 669)),
    ],
)
def test_upsampled_size_exact_short_side(h, w, expected):
    assert _upsampled_size(h, w, 224) == expected


@pytest.mark.parametrize(
    "h,w,size", [(48, 64, (224, 299)), (64, 48, (299, 224)), (48, 85, (224, 397)), (85, 48, (397, 224))]
)
def test_fragments_upsample_small_covers_whole_frame(h, w, size):
    v = ramp_video(2, h, w)
    out = grid_fragments(v, generator=gen(11))
    assert out.shape == (3, 2, 224, 224) and out.dtype == torch.uint8
    ref = upsample_ref(v, size)
    origins = match_crops(out, ref)  # every patch is a crop inside its cell of the upsampled frame
    # the bottom-right cell samples the bottom-right of the frame, not the top-left corner
    assert origins[0, 6, 6, 0] >= size[0] - 32 - 32 and origins[0, 6, 6, 1] >= size[1] - 2 * 32 - 32
    br = out[:, 0, 192:, 192:]
    assert br[0].float().mean() > 200 and br[1].float().mean() > 190  # ramps end at 250


def test_fragments_upsample_tall_thin_layouts_identical():
    v = ramp_video(3, 400, 200)  # short side 200 -> (448, 224)
    a = grid_fragments(v, generator=gen(12))
    b = grid_fragments(v.permute(1, 2, 3, 0), generator=gen(12), layout="THWC")
    assert torch.equal(a, b)
    match_crops(a, upsample_ref(v, (448, 224)))


def test_fragments_float_path_matches_uint8_and_is_differentiable():
    v = ramp_video(3, 300, 260)  # large enough: no upsampling, so the float path is the same gather
    a = grid_fragments(v, generator=gen(5))
    x = v.float().requires_grad_()
    b = grid_fragments(x, generator=gen(5))
    assert b.dtype == torch.float32 and torch.equal(a.float(), b.detach())
    b.sum().backward()
    # each output pixel is one input pixel: the gradient counts how often a pixel was picked
    assert x.grad.sum() == b.numel() and set(x.grad.unique().tolist()) <= {0.0, 1.0}
    small = ramp_video(3, 120, 160)  # upsampled: float skips the uint8 rounding, within half a level
    diff = grid_fragments(small, generator=gen(6)).float() - grid_fragments(small.float(), generator=gen(6))
    assert diff.abs().max() <= 0.5 + 1e-4


def test_fragments_errors():
    with pytest.raises(ValueError, match="uint8 or floating"):
        grid_fragments(torch.zeros(3, 2, 224, 224, dtype=torch.int32), generator=gen())
    with pytest.raises(ValueError, match="channels"):
        grid_fragments(torch.zeros(2, 224, 224, 3, dtype=torch.uint8), generator=gen())
    with pytest.raises(ValueError, match="layout"):
        grid_fragments(torch.zeros(3, 2, 224, 224, dtype=torch.uint8), layout="HWC")
    with pytest.raises(ValueError):
        grid_fragments(torch.zeros(3, 2, 224, 224, dtype=torch.uint8), patch=0)


# ----------------------------------------------------------------------------- resize


def test_resize_shape_dtype_range_and_constant():
    v = torch.full((3, 5, 90, 160), 77, dtype=torch.uint8)
    out = resize_frames(v)
    assert out.shape == (3, 5, 224, 224) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, 77.0), atol=1e-3)
    big = torch.randint(0, 256, (3, 3, 300, 500), dtype=torch.uint8, generator=gen())
    out = resize_frames(big, size=(112, 64))
    assert out.shape == (3, 3, 112, 64)
    assert out.min() >= 0 and out.max() <= 255


def test_resize_antialias():
    # Columns 0,3,6,... are white. Plain bilinear 3x downscaling samples exactly the black column
    # 3i+1 (all 0); antialiasing averages over the footprint (about 255/3).
    v = torch.zeros(3, 1, 224, 672, dtype=torch.uint8)
    v[..., ::3] = 255
    out = resize_frames(v)
    assert 60 < out.mean() < 110


def test_resize_layouts_and_chunks_identical():
    v = torch.randint(0, 256, (7, 50, 70, 3), dtype=torch.uint8, generator=gen())
    a = resize_frames(v, layout="THWC", size=32)
    b = resize_frames(v.permute(3, 0, 1, 2), size=32, chunk=3)
    assert torch.equal(a, b)
    c = resize_frames(v.permute(3, 0, 1, 2).float(), size=32)
    assert torch.allclose(a, c)


def test_resize_errors():
    v = torch.zeros(3, 2, 10, 10, dtype=torch.uint8)
    with pytest.raises(ValueError):
        resize_frames(v, size=0)
    with pytest.raises(ValueError):
        resize_frames(v, size=(1, 2, 3))
    with pytest.raises(ValueError, match="uint8 or floating"):
        resize_frames(v.to(torch.int32))


# ----------------------------------------------------------------------------- guardian map


def test_guardian_map_values_and_shape():
    m = guardian_map(generator=gen())
    assert m.shape == (3, 1, 224, 224) and m.dtype == torch.float32
    assert set(m.unique().tolist()) == {-1.0, 1.0}
    assert 0.48 < (m > 0).float().mean() < 0.52
    assert guardian_map(generator=gen(), size=(16, 24), channels=1).shape == (1, 1, 16, 24)


def test_guardian_map_fresh_and_replay():
    g = gen(13)
    a, b = guardian_map(generator=g), guardian_map(generator=g)
    assert not torch.equal(a, b)
    assert torch.equal(a, guardian_map(generator=gen(13)))


def test_guardian_map_errors():
    with pytest.raises(ValueError):
        guardian_map(generator=gen(), size=0)
    with pytest.raises(ValueError):
        guardian_map(generator=gen(), channels=0)


def test_apply_guardian_broadcast_over_frames_and_batch():
    m = guardian_map(generator=gen(), size=16)
    x = torch.full((3, 4, 16, 16), 100, dtype=torch.uint8)
    y = apply_guardian_map(x, m)
    assert y.dtype == torch.float32 and y.shape == (3, 4, 16, 16)
    for t in range(4):
        assert torch.equal(y[:, t], 100 + m[:, 0])
    yb = apply_guardian_map(torch.stack([x, x]).float(), m)
    assert yb.shape == (2, 3, 4, 16, 16) and torch.equal(yb[1], y)


def test_apply_guardian_one_map_per_sample():
    maps = torch.stack([guardian_map(generator=gen(s), size=8) for s in range(2)])  # (2,3,1,8,8)
    y = apply_guardian_map(torch.full((2, 3, 4, 8, 8), 50.0), maps)
    assert torch.equal(y[0, :, 3], 50 + maps[0, :, 0]) and torch.equal(y[1, :, 0], 50 + maps[1, :, 0])


def test_apply_guardian_clamps():
    m = guardian_map(generator=gen(), size=16)
    lo = apply_guardian_map(torch.zeros(3, 2, 16, 16, dtype=torch.uint8), m)
    hi = apply_guardian_map(torch.full((3, 2, 16, 16), 255, dtype=torch.uint8), m)
    assert set(lo.unique().tolist()) == {0.0, 1.0}
    assert set(hi.unique().tolist()) == {254.0, 255.0}


def test_apply_guardian_gradient():
    m = guardian_map(generator=gen(), size=8)
    x = torch.full((3, 2, 8, 8), 100.0, requires_grad=True)
    apply_guardian_map(x, m).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    x0 = torch.zeros(3, 2, 8, 8, requires_grad=True)
    apply_guardian_map(x0, m).sum().backward()
    assert torch.equal(x0.grad, (m > 0).float().expand_as(x0))  # clamped pixels pass no gradient


def test_apply_guardian_errors():
    m = guardian_map(generator=gen(), size=8)
    with pytest.raises(ValueError):
        apply_guardian_map(torch.zeros(3, 2, 16, 16), m)
    with pytest.raises(ValueError):
        apply_guardian_map(torch.zeros(3, 8, 8), m)
    with pytest.raises(ValueError):
        apply_guardian_map(torch.zeros(3, 4, 8, 8), torch.zeros(3, 2, 8, 8))


# ----------------------------------------------------------------------------- normalize


def test_normalize_hand_values():
    assert MEAN == (123.675, 116.28, 103.53) and STD == (58.395, 57.12, 57.375)
    x = torch.zeros(3, 1, 1, 2, dtype=torch.uint8)
    x[:, 0, 0, 1] = 255
    y = normalize(x)
    assert y.dtype == torch.float32
    # hand computed: (0 - mean) / std and (255 - mean) / std
    expected0 = torch.tensor([-2.1179039, -2.0357143, -1.8044444])
    expected1 = torch.tensor([2.2489083, 2.4285715, 2.6399999])
    assert torch.allclose(y[:, 0, 0, 0], expected0, atol=1e-6)
    assert torch.allclose(y[:, 0, 0, 1], expected1, atol=1e-6)
    xb = torch.stack([x, x]).float()
    assert torch.allclose(normalize(xb)[1], y)
    one = torch.tensor([123.675 + 58.395, 116.28, 103.53]).view(3, 1, 1, 1)
    assert torch.allclose(normalize(one).flatten(), torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)


def test_normalize_errors():
    with pytest.raises(ValueError, match="channels"):
        normalize(torch.zeros(4, 1, 2, 2))
    with pytest.raises(ValueError):
        normalize(torch.zeros(3, 2, 2))


@pytest.mark.parametrize("hw", [(16, 1024), (1024, 16), (100, 150), (223, 400), (17, 33)])
def test_small_frames_upsample_only_what_the_fragments_read(hw, monkeypatch):
    """Fragments of a frame below 224 px equal those of the whole frame upsampled first (to float32
    rounding: the gather blends in another order), but no full-size frame is ever built: memory per
    clip is bounded by the output whatever the aspect ratio (a 1024x16 clip took 2.6 GB and 5.9 s)."""
    from model import transforms as T

    torch.manual_seed(0)
    v = torch.randint(0, 256, (3, 8, *hw), dtype=torch.uint8)
    up = T._upsampled_size(*hw, 224)
    whole = {dt: T.grid_fragments(T._bilinear(v.to(dt), up), generator=torch.Generator().manual_seed(5))
             for dt in (torch.uint8, torch.float32)}

    def no_whole_frames(*_a, **_k):
        raise AssertionError("a whole frame was upsampled")

    monkeypatch.setattr(T, "_bilinear", no_whole_frames)
    monkeypatch.setattr(T.F, "interpolate", no_whole_frames)
    fast = T.grid_fragments(v, generator=torch.Generator().manual_seed(5))
    assert fast.shape == (3, 8, 224, 224) and fast.dtype == torch.uint8
    diff = (fast.int() - whole[torch.uint8].int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3  # a rounding flip at .5, rarely
    x = v.float().requires_grad_()
    fx = T.grid_fragments(x, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(fx, whole[torch.float32], rtol=0, atol=2e-3)  # 0-255 scale
    fx.sum().backward()  # the attacks' differentiable path
    assert x.grad is not None and x.grad.abs().sum() > 0
