"""SecureVQA and InterEmbedder: shapes, randomness, gradients, precision, adaptive windows."""

import pytest
import torch
from scipy import stats

from model import InterEmbedder, SecureVQA, get_config, make_generator
from model.swin import SwinTransformer3D, adaptive_window

TINY = get_config("tiny")


def tiny_models(seed: int = 0, guardian: bool = True):
    torch.manual_seed(seed)
    return SecureVQA(TINY, guardian=guardian).eval(), InterEmbedder(TINY, guardian=guardian)


def random_clips(b: int, k: int = 1, t: int = 32, size: int = 224, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, k, 3, t, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.slow  # 6 clips at 224 px: 7 s of CPU
def test_shapes_and_score():
    vqa, inter = tiny_models()
    segments = random_clips(2, 16, t=32, size=64)  # fast pathway accepts any size; 224 in production
    with torch.no_grad():
        emb = inter(segments, generator=make_generator(0))
        assert emb.shape == (2, 16, TINY.inter_dim)
        per_clip = vqa(random_clips(2, 3), emb, generator=make_generator(0))
        assert per_clip.shape == (2, 3)
        video = vqa.score(random_clips(2, 3), emb, generator=make_generator(0))
    assert video.shape == (2,)
    assert torch.isfinite(video).all()


def test_bad_inputs_are_named():
    vqa, _ = tiny_models()
    with pytest.raises(ValueError, match="clips must be"):
        vqa(torch.zeros(1, 2, 32, 224, 224), torch.zeros(1, 16, TINY.inter_dim))
    with pytest.raises(ValueError, match="inter embeddings"):
        vqa(random_clips(1), torch.zeros(1, 16, TINY.inter_dim + 1))
    with pytest.raises(ValueError, match="precision"):
        vqa.set_precision("fp8")  # type: ignore[arg-type]


def test_guardian_map_fresh_per_call_and_replayable():
    vqa, _ = tiny_models()
    clips, emb = random_clips(1, 2), torch.randn(1, 16, TINY.inter_dim)
    with torch.no_grad():
        a = vqa(clips, emb, generator=make_generator(1))
        b = vqa(clips, emb, generator=make_generator(1))
        c = vqa(clips, emb, generator=make_generator(2))
        fresh1, fresh2 = vqa(clips, emb), vqa(clips, emb)
    assert torch.equal(a, b), "same seed must replay exactly"
    assert not torch.equal(a, c), "another seed must draw another guardian map"
    assert not torch.equal(fresh1, fresh2), "no generator: fresh randomness on every call"
    assert a[0, 0] != a[0, 1] or not torch.equal(clips[0, 0], clips[0, 1])


def test_guardian_off_is_deterministic_and_changes_scores():
    on, _ = tiny_models(guardian=True)
    off, _ = tiny_models(guardian=False)
    clips, emb = random_clips(1), torch.randn(1, 16, TINY.inter_dim)
    with torch.no_grad():
        assert torch.equal(off(clips, emb), off(clips, emb))
        assert not torch.equal(on(clips, emb, generator=make_generator(0)), off(clips, emb))


def test_gradient_reaches_swin_and_head_never_fast_pathway():
    vqa, inter = tiny_models()
    vqa.train()
    inter.train()  # must stay frozen and in eval mode whatever the caller asks
    assert not inter.training and not any(m.training for m in inter.modules())
    segments = random_clips(1, 16, size=64).float().requires_grad_(True)
    emb = inter(segments, generator=make_generator(0))
    loss = vqa.score(random_clips(1), emb, generator=make_generator(0)).sum()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in vqa.intra.named_parameters()
               if not n.endswith("fragment_position_bias_table") or True), "every Swin parameter gets a gradient"
    assert all(p.grad is not None for p in vqa.head.parameters())
    assert all(not p.requires_grad and p.grad is None for p in inter.parameters())
    assert segments.grad is not None and segments.grad.abs().sum() > 0, "attacks need pixel gradients"


def test_training_after_inference_mode_scoring():
    """Scoring under inference_mode first (as the pipeline does) must not poison the cached index
    tensors for a later forward that autograd records (training, attacks)."""
    from model.swin import relative_position_index

    relative_position_index.cache_clear()
    vqa, _ = tiny_models()
    clips, emb = random_clips(1), torch.randn(1, 16, TINY.inter_dim)
    with torch.inference_mode():
        vqa(clips, emb, generator=make_generator(0))
    vqa.train()
    vqa.score(clips, emb, generator=make_generator(0)).sum().backward()
    assert all(p.grad is not None for p in vqa.head.parameters())


def test_batchnorm_of_fast_pathway_uses_running_stats():
    _, inter = tiny_models()
    seg = random_clips(3, 16, size=64)
    with torch.no_grad():
        batch = inter(seg, generator=make_generator(0))
        alone = inter(seg[:1], generator=make_generator(0))
    assert torch.allclose(batch[:1], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [(16, 224, 224), (32, 160, 224), (32, 200, 200)])
def test_adaptive_window_sizes_run(size):
    swin = SwinTransformer3D(TINY.swin).eval()
    with torch.no_grad():
        out = swin(torch.randn(1, 3, *size))
    assert out.shape == (1, TINY.intra_dim, size[0] // 2, -(-size[1] // 32), -(-size[2] // 32))
    assert adaptive_window(TINY.swin, size) == tuple(max(1, w * s // b) for w, s, b in zip((8, 7, 7), size, (32, 224, 224)))


def test_adaptive_window_rejects_larger_inputs():
    with pytest.raises(ValueError, match="larger than the base size"):
        adaptive_window(TINY.swin, (32, 448, 448))


def test_bias_cache_follows_weight_updates():
    torch.manual_seed(0)
    swin = SwinTransformer3D(TINY.swin).eval()
    x = torch.randn(1, 3, 32, 224, 224)
    with torch.no_grad():
        before = swin(x)
        table = swin.layers[0].blocks[0].attn.fragment_position_bias_table
        table.add_(torch.randn_like(table))  # in place, as an optimizer step
        after = swin(x)
        fresh = SwinTransformer3D(TINY.swin).eval()
        fresh.load_state_dict(swin.state_dict())
        expected = fresh(x)
    assert not torch.allclose(before, after)
    assert torch.equal(after, expected)


def diverse_clips(n: int = 32, seed: int = 0) -> torch.Tensor:
    """Clips that differ in what quality models look at: texture scale, contrast, noise."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        scale = (4, 8, 14, 28)[i % 4]
        x = torch.nn.functional.interpolate(torch.rand(1, 3, 32, scale, scale, generator=g) * 255,
                                            size=(32, 224, 224), mode="trilinear")
        contrast = 0.2 + 0.8 * float(torch.rand(1, generator=g))
        noise = 60 * float(torch.rand(1, generator=g))
        out.append(((x - 128) * contrast + 128 + noise * torch.randn(x.shape, generator=g)).clamp(0, 255).round())
    return torch.cat(out)[:, None]


@pytest.mark.slow  # 32 clips at 224 px twice: about a minute of CPU, most of it emulated bf16
def test_bf16_scores_agree_with_fp32():
    """Precision option: bf16 ranks a set of clips like fp32 (Spearman >= 0.999)."""
    vqa, _ = tiny_models(seed=3)
    clips = diverse_clips()
    emb = torch.randn(len(clips), 16, TINY.inter_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fp32 = vqa.score(clips, emb, generator=make_generator(0))
        vqa.set_precision("bf16")
        assert vqa.intra.layers[0].blocks[0].mlp.fc1.weight.dtype == torch.bfloat16
        bf16 = vqa.score(clips, emb, generator=make_generator(0))
    rho = stats.spearmanr(fp32.numpy(), bf16.numpy()).statistic
    spread = (fp32.max() - fp32.min()).item()
    print(f"bf16 vs fp32 on {len(clips)} clips: Spearman {rho:.5f}, max |diff| {(fp32 - bf16).abs().max():.3g}, "
          f"score range {spread:.3g}")
    assert bf16.dtype == torch.float32
    assert not torch.equal(fp32, bf16), "bf16 must actually run in bf16"
    assert rho >= 0.999


def test_training_attention_equals_sdpa_with_its_gradients():
    """The training path's attention (bias with a gradient) gives SDPA's outputs and gradients."""
    from model.swin import WindowAttention3D

    torch.manual_seed(0)
    model = SecureVQA(get_config("tiny-cpu")).train()
    x = torch.randint(0, 256, (1, 1, 3, 16, 160, 160), dtype=torch.uint8)
    inter = torch.randn(1, 8, model.cfg.inter_dim)
    results = []
    for kernel in ("baddbmm", "sdpa"):
        WindowAttention3D.bias_grad_kernel = kernel
        try:
            model.zero_grad()
            torch.manual_seed(1)  # drop-path draws
            out = model(x, inter, generator=torch.Generator().manual_seed(2))
            out.sum().backward()
        finally:
            WindowAttention3D.bias_grad_kernel = "baddbmm"
        results.append((out.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    (oa, ga), (ob, gb) = results
    torch.testing.assert_close(oa, ob, rtol=1e-5, atol=1e-6)
    assert any("fragment_position_bias_table" in k for k in ga) and ga.keys() == gb.keys()
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- shifted windows (docs/design.md §2.1)

def _reference_shifted_block(blk, x, window, shift):
    """One shifted Swin block written out the way Video Swin does it (pad after norm1, roll, window
    partition, slice-labelled shift mask, relative bias of the base table cut to the window), with
    none of model/swin.py's helpers: the rule under test is only which `window` and `shift` apply."""
    import torch.nn.functional as F

    b, d, h, w, c = x.shape
    wd, wh, ww = window
    y = blk.norm1(x)
    dp, hp, wp = (-(-d // wd) * wd, -(-h // wh) * wh, -(-w // ww) * ww)
    y = F.pad(y, (0, 0, 0, wp - w, 0, hp - h, 0, dp - d))
    y = torch.roll(y, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    label = torch.zeros(dp, hp, wp)
    cnt = 0
    for sd in (slice(-wd), slice(-wd, -shift[0] or None), slice(-shift[0] or None, None)) if shift[0] else (slice(None),):
        for sh in (slice(-wh), slice(-wh, -shift[1] or None), slice(-shift[1] or None, None)) if shift[1] else (slice(None),):
            for sw in (slice(-ww), slice(-ww, -shift[2] or None), slice(-shift[2] or None, None)) if shift[2] else (slice(None),):
                label[sd, sh, sw] = cnt
                cnt += 1

    def part(t):  # (..., Dp, Hp, Wp, C) -> (nW, N, C)
        t = t.reshape(-1, dp // wd, wd, hp // wh, wh, wp // ww, ww, t.shape[-1])
        return t.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wd * wh * ww, t.shape[-1])

    lab = part(label[None, ..., None])[..., 0]
    mask = torch.where(lab[:, :, None] == lab[:, None, :], 0.0, -100.0)
    bd, bh, bw = blk.attn.base_window
    coords = torch.stack(torch.meshgrid(torch.arange(wd), torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    index = (rel[0] + bd - 1) * (2 * bh - 1) * (2 * bw - 1) + (rel[1] + bh - 1) * (2 * bw - 1) + (rel[2] + bw - 1)
    n, heads = wd * wh * ww, blk.attn.num_heads
    bias = blk.attn.relative_position_bias_table[index.reshape(-1)].view(n, n, heads).permute(2, 0, 1)
    win = part(y)  # (B*nW, N, C)
    qkv = blk.attn.qkv(win).view(win.shape[0], n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    nw = mask.shape[0]
    logits = (q @ k.transpose(-1, -2)) * (c // heads) ** -0.5
    logits = logits.view(b, nw, heads, n, n) + bias[None, None] + mask[None, :, None]
    out = (logits.softmax(-1).view(-1, heads, n, n) @ v).transpose(1, 2).reshape(-1, n, c)
    out = blk.attn.proj(out)
    out = out.view(b, dp // wd, hp // wh, wp // ww, wd, wh, ww, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
    out = out.reshape(b, dp, hp, wp, c)
    out = torch.roll(out, shifts=shift, dims=(1, 2, 3))[:, :d, :h, :w]
    x = x + out
    return x + blk.mlp(blk.norm2(x))


# (input T, H, W) -> stage-1 tokens (T/2, H/4, W/4); base window (8, 7, 7), base half-shift (4, 3, 3)
SHIFT_CASES = {
    "16x224 (window 4,7,7)": ((8, 56, 56), (4, 7, 7), (4, 3, 3)),
    "16x200 padded (window 4,6,6)": ((8, 50, 50), (4, 6, 6), (4, 3, 3)),
    "tiny-cpu 16x160 (window 4,5,5)": ((8, 40, 40), (4, 5, 5), (4, 3, 3)),
    "time fits the window": ((4, 14, 14), (4, 7, 7), (0, 3, 3)),
    "8x96x224: height fits": ((4, 3, 56), (1, 3, 7), (4, 0, 3)),
}


@pytest.mark.parametrize("case", sorted(SHIFT_CASES))
def test_shifted_blocks_shift_by_the_base_half_window(case):
    """docs/design.md §2.1: along an axis where the tokens exceed the adaptive window the shift is half
    the BASE window, else 0 (and the window is the map's size)."""
    from model.swin import BlockGeometry, SwinBlock3D, SwinStage, stage_window

    tokens, window, shift = SHIFT_CASES[case]
    clamped = tuple(min(t, w) for t, w in zip(tokens, window))
    assert stage_window(tokens, window, (8, 7, 7)) == (clamped, shift)
    torch.manual_seed(0)
    stage = SwinStage(16, 2, 2, (8, 7, 7), 2.0, [0.0, 0.0], frag_bias=False, downsample=False).eval()
    blk = stage.blocks[1]
    assert isinstance(blk, SwinBlock3D) and blk.shifted
    x = torch.randn(1, *tokens, 16)
    with torch.no_grad():
        ours = stage(x, window)
        first = stage.blocks[0](x, BlockGeometry.build(tokens, window, (8, 7, 7), False, False))
        ref = _reference_shifted_block(blk, first, clamped, shift)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_a_fusion_that_forgets_the_inter_branch_scores_without_it_and_still_learns_it():
    from model.fusion import FusionHead

    torch.manual_seed(0)
    head = FusionHead(48, 16).eval()
    intra, inter = torch.randn(2, 48, 4, 1, 1), torch.randn(2, 4, 16)
    before = head(intra, inter)
    assert head.fusion.forget_inter_() is head.fusion
    after = head(intra, inter)
    assert not torch.allclose(before, after)  # it did read the inter embedding before
    assert torch.allclose(after, head(intra, 5 * torch.randn(2, 4, 16)))  # now it does not
    head(intra, inter).sum().backward()
    assert head.fusion.mix.weight.grad[:, 48:].abs().sum() > 0  # but can learn to again
