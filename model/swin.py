"""Video Swin Transformer with gated relative position bias (GRPB), the intra branch backbone.

Facts follow docs/design.md §2.1 (Video Swin-T as in FAST-VQA / SecureVQA); the code is our own. What makes
it fast (docs/performance.md has the measurements):
- window attention goes through `scaled_dot_product_attention` (4-D, contiguous inputs) with one
  additive bias per block that already holds the relative-position bias, the fragment gate and the
  shifted-window mask; the bias is cached when no gradient can reach the tables;
- tokens stay channels-last (B, D, H, W, C), so every linear layer is one GEMM;
- optional mixed precision: linear weights in bf16, the rest in fp32 (`set_matmul_dtype`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import SwinConfig, Triple

_SHIFT_MASK_VALUE = -100.0  # what Swin adds between tokens from different regions after a cyclic shift


# ----------------------------------------------------------------------------- window geometry

def _constant(fn):
    """lru_cache for the constant index, mask and gate tensors, always built outside inference mode:
    a tensor first made under torch.inference_mode and then cached would break every later forward that
    autograd records (training, white-box attacks) with "inference tensors cannot be saved for backward"."""

    @functools.lru_cache(maxsize=64)
    @functools.wraps(fn)
    def cached(*args):
        with torch.inference_mode(False), torch.no_grad():
            return fn(*args)

    return cached


def adaptive_window(cfg: SwinConfig, input_size: Triple) -> Triple:
    """Window for an input of size (T, H, W): the base window scaled with the input (docs/design.md §2.1)."""
    if not cfg.adaptive_window:
        return cfg.window_size
    win = tuple(max(1, w * s // b) for w, s, b in zip(cfg.window_size, input_size, cfg.base_input_size))
    if any(w > b for w, b in zip(win, cfg.window_size)):
        raise ValueError(
            f"input {tuple(input_size)} is larger than the base size {cfg.base_input_size}: its adaptive "
            f"window {win} would exceed the relative-position tables built for {cfg.window_size}"
        )
    return win  # type: ignore[return-value]


def stage_window(token_size: Triple, window: Triple, base_window: Triple) -> tuple[Triple, Triple]:
    """(window, shift) of a stage's blocks for a (D, H, W) token map and the (adaptive) window.

    Swin's clamp: along an axis where the token map fits in the window, the window is the map and the
    shift is 0. Along every other axis the shifted blocks shift by half the BASE window (4, 3, 3 for
    (8, 7, 7)), even when the adaptive window is smaller: the reference takes the shift from the
    configured window, never from the adapted one (docs/design.md §2.1, "Adaptive window").
    """
    win = tuple(min(t, w) for t, w in zip(token_size, window))
    shift = tuple(0 if t <= w else b // 2 for t, w, b in zip(token_size, window, base_window))
    return win, shift  # type: ignore[return-value]


def window_partition(x: Tensor, window: Triple) -> Tensor:
    """(B, D, H, W, C) -> (B, nW, N, C) with N = prod(window); windows in (d, h, w) raster order."""
    b, d, h, w, c = x.shape
    wd, wh, ww = window
    x = x.view(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, wd * wh * ww, c)


def window_reverse(windows: Tensor, window: Triple, size: Triple) -> Tensor:
    """Inverse of `window_partition`: (B, nW, N, C) -> (B, D, H, W, C)."""
    b, _, _, c = windows.shape
    d, h, w = size
    wd, wh, ww = window
    x = windows.view(b, d // wd, h // wh, w // ww, wd, wh, ww, c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, c)


@_constant
def relative_position_index(base_window: Triple, window: Triple) -> Tensor:
    """(N, N) index into the relative-position table of `base_window`, cut to `window` per axis."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in base_window], indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # N, N, 3
    bd, bh, bw = base_window
    index = (rel[..., 0] + bd - 1) * (2 * bh - 1) * (2 * bw - 1) + (rel[..., 1] + bh - 1) * (2 * bw - 1) + (
        rel[..., 2] + bw - 1
    )
    d, h, w = window
    index = index.view(bd, bh, bw, bd, bh, bw)[:d, :h, :w, :d, :h, :w]
    n = d * h * w
    return index.reshape(n, n).contiguous()


@_constant
def shift_mask(padded: Triple, window: Triple, shift: Triple) -> Tensor | None:
    """(nW, N, N) additive mask keeping attention inside the regions a cyclic shift brought together."""
    if not any(shift):
        return None
    ids = []
    for p, w, s in zip(padded, window, shift):
        i = torch.arange(p)
        ids.append((i >= p - w).long() + (i >= p - s).long() if s else torch.zeros(p, dtype=torch.long))
    region = ids[0][:, None, None] * 9 + ids[1][None, :, None] * 3 + ids[2][None, None, :]
    win = window_partition(region[None, ..., None].float(), window)[0, ..., 0]  # nW, N
    diff = win[:, :, None] != win[:, None, :]
    return torch.zeros(diff.shape).masked_fill_(diff, _SHIFT_MASK_VALUE)


@_constant
def fragment_gate(padded: Triple, window: Triple, shift: Triple) -> Tensor:
    """(nW, N, N) GRPB gate: L1 distance between the fragment coordinates of two tokens of a window.

    A (1, wh, ww) grid of fragment coordinates is resized (nearest) onto the padded token map, rolled
    like the tokens, and window-partitioned; the gate is 0 inside one fragment, >= 1 across fragments.
    """
    _, wh, ww = window
    grid = torch.stack(
        torch.meshgrid(torch.arange(1), torch.arange(wh), torch.arange(ww), indexing="ij")
    ).float()  # 3, 1, wh, ww
    coords = F.interpolate(grid[None], size=padded, mode="nearest")[0]  # 3, Dp, Hp, Wp
    coords = coords.permute(1, 2, 3, 0)
    if any(shift):
        coords = torch.roll(coords, shifts=tuple(-s for s in shift), dims=(0, 1, 2))
    win = window_partition(coords[None], window)[0]  # nW, N, 3
    return (win[:, None, :, :] - win[:, :, None, :]).abs().sum(-1)


# ----------------------------------------------------------------------------- modules

class DropPath(nn.Module):
    """Stochastic depth per sample; identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Linear(nn.Linear):
    """`nn.Linear` that runs in its weight's dtype whatever the input's.

    Mixed precision without autocast: `SwinTransformer3D.set_matmul_dtype(torch.bfloat16)` stores the
    matmul weights in bf16 once (autocast would re-cast them on every call), while the residual
    stream, LayerNorms, attention softmax and position biases stay in fp32 for accuracy.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside 3D windows with (gated) relative position bias."""

    def __init__(self, dim: int, num_heads: int, base_window: Triple, frag_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.base_window = base_window
        table = (2 * base_window[0] - 1) * (2 * base_window[1] - 1) * (2 * base_window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # GRPB: the bias used between tokens of the same fragment; zero-initialised.
        self.fragment_position_bias_table = nn.Parameter(torch.zeros(table, num_heads)) if frag_bias else None
        self.qkv = Linear(dim, 3 * dim)
        self.proj = Linear(dim, dim)
        self._bias_key: tuple | None = None
        self._bias: Tensor | None = None

    # When the bias needs a gradient (training): "baddbmm" (`_attention_with_bias_grad`) or "sdpa" (PyTorch's
    # math fallback, the earlier path; kept so that bench/bench_train.py can time both in one run).
    bias_grad_kernel: str = "baddbmm"

    def attention_bias(self, geometry: "BlockGeometry", dtype: torch.dtype, device: torch.device) -> Tensor:
        """(nW or 1, heads, N, N) additive bias: gated relative bias plus the shifted-window mask.

        Assembling it costs several passes over nW*heads*N*N values per block (236 MB at Swin-T's
        first stage), so when no gradient can flow to the tables it is cached, keyed on the window
        geometry and on the tables' identity and version (any in-place update invalidates it).
        """
        tables = [t for t in (self.relative_position_bias_table, self.fragment_position_bias_table) if t is not None]
        if torch.is_grad_enabled() and any(t.requires_grad for t in tables):
            return self._assemble_bias(geometry, dtype, device)
        key = (geometry.window, geometry.shift, geometry.padded, dtype, device,
               tuple((t.data_ptr(), t._version, t.dtype) for t in tables))
        if self._bias_key != key:
            self._bias_key, self._bias = None, None  # free the old one before building the new
            self._bias = self._assemble_bias(geometry, dtype, device)
            self._bias_key = key
        return self._bias

    def _assemble_bias(self, geometry: "BlockGeometry", dtype: torch.dtype, device: torch.device) -> Tensor:
        index = relative_position_index(self.base_window, geometry.window).to(device)
        n = index.shape[0]
        rel = self.relative_position_bias_table[index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        if self.fragment_position_bias_table is not None:
            frag = self.fragment_position_bias_table[index.view(-1)].view(n, n, -1).permute(2, 0, 1)
            gate = geometry.gate.to(device)[:, None]  # nW, 1, N, N
            # rel * gate + frag * (1 - gate), written with one product
            bias = frag + (rel - frag) * gate
        else:
            bias = rel[None]
        if geometry.mask is not None:
            bias = bias + geometry.mask.to(device)[:, None]
        return bias.to(dtype).contiguous()  # the fused kernels read a strided mask slowly

    def forward(self, windows: Tensor, bias: Tensor) -> Tensor:
        """windows: (B, nW, N, C); bias: (nW or 1, heads, N, N)."""
        b, nw, n, c = windows.shape
        qkv = self.qkv(windows).view(b, nw, n, 3, self.num_heads, c // self.num_heads)
        # One copy into (3, B, nW, heads, N, hd), in the bias's dtype (fp32 under mixed precision):
        # the fused kernels run faster on contiguous inputs, and bf16 attention is no faster on CPU.
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).to(bias.dtype, memory_format=torch.contiguous_format).unbind(0)
        if bias.requires_grad and self.bias_grad_kernel == "baddbmm":
            return self.proj(_attention_with_bias_grad(q, k, v, bias).transpose(2, 3).reshape(b, nw, n, c))
        # The fused CPU/GPU kernels take 4-D inputs only (5-D falls back to the slow math path), and
        # a per-window bias broadcasts over windows but not over B*nW: so one call per clip.
        if bias.shape[0] == 1:
            out = F.scaled_dot_product_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), attn_mask=bias)
            out = out.view(b, nw, self.num_heads, n, -1)
        else:
            out = torch.stack([F.scaled_dot_product_attention(q[i], k[i], v[i], attn_mask=bias) for i in range(b)])
        return self.proj(out.transpose(2, 3).reshape(b, nw, n, c))


def _attention_with_bias_grad(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) v for (B, nW, heads, N, d) inputs and a (nW or 1, heads, N, N) bias
    that needs a gradient (training: the position tables learn).

    PyTorch's fused kernels give no gradient for an additive mask, so SDPA falls back to its math path,
    which adds separate passes over every N x N matrix (scale, bias add, and a -inf guard: where,
    isneginf, all). Here one baddbmm forms the logits (scale and bias in the GEMM) and autograd of
    baddbmm/softmax/bmm does the rest: the same arithmetic and gradients (tests/test_model.py), fewer
    passes (docs/training.md has the timing). The bias is finite, so no -inf guard is needed.
    """
    b, nw, h, n, d = q.shape
    # A view for one clip of per-window biases (the CPU micro-batch); a copy otherwise.
    logits = torch.baddbmm(bias.expand(b, nw, h, n, n).reshape(-1, n, n), q.reshape(-1, n, d),
                           k.reshape(-1, n, d).transpose(1, 2), alpha=d ** -0.5)
    return torch.bmm(logits.softmax(-1), v.reshape(-1, n, d)).view(b, nw, h, n, d)


@dataclass(frozen=True)
class BlockGeometry:
    """Everything about a block's windows that depends only on sizes, never on weights."""

    window: Triple
    shift: Triple
    padded: Triple
    mask: Tensor | None
    gate: Tensor | None

    @staticmethod
    def build(token_size: Triple, window: Triple, base_window: Triple, shifted: bool, gated: bool) -> "BlockGeometry":
        win, shift = stage_window(token_size, window, base_window)
        if not shifted:
            shift = (0, 0, 0)
        padded = tuple(-(-t // w) * w for t, w in zip(token_size, win))
        return BlockGeometry(
            window=win,
            shift=shift,
            padded=padded,  # type: ignore[arg-type]
            mask=shift_mask(padded, win, shift),
            gate=fragment_gate(padded, win, shift) if gated else None,
        )


class SwinBlock3D(nn.Module):
    def __init__(
        self, dim: int, num_heads: int, base_window: Triple, shifted: bool, mlp_ratio: float, drop_path: float,
        frag_bias: bool,
    ) -> None:
        super().__init__()
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, num_heads, base_window, frag_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, geometry: BlockGeometry) -> Tensor:
        """x: (B, D, H, W, C) channels-last tokens."""
        _, d, h, w, _ = x.shape
        y = self.norm1(x)
        dp, hp, wp = geometry.padded
        if (dp, hp, wp) != (d, h, w):
            # Video Swin pads *after* norm1: padded tokens take part in attention as zeros.
            y = F.pad(y, (0, 0, 0, wp - w, 0, hp - h, 0, dp - d))
        if any(geometry.shift):
            y = torch.roll(y, shifts=tuple(-s for s in geometry.shift), dims=(1, 2, 3))
        bias = self.attn.attention_bias(geometry, y.dtype, y.device)
        y = self.attn(window_partition(y, geometry.window), bias)
        y = window_reverse(y, geometry.window, geometry.padded)
        if any(geometry.shift):
            y = torch.roll(y, shifts=geometry.shift, dims=(1, 2, 3))
        x = x + self.drop_path(y[:, :d, :h, :w])
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 spatial merge: (B, D, H, W, C) -> (B, D, H/2, W/2, 2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w, _ = x.shape
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # channel order (0,0), (1,0), (0,1), (1,1) as in Video Swin's checkpoints
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(
        self, dim: int, depth: int, num_heads: int, base_window: Triple, mlp_ratio: float,
        drop_paths: list[float], frag_bias: bool, downsample: bool,
    ) -> None:
        super().__init__()
        self.frag_bias = frag_bias
        self.base_window = base_window
        self.blocks = nn.ModuleList(
            SwinBlock3D(dim, num_heads, base_window, i % 2 == 1, mlp_ratio, drop_paths[i], frag_bias)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor, window: Triple) -> Tensor:
        """x: (B, D, H, W, C) channels-last tokens."""
        size = tuple(x.shape[1:4])
        geometries = [BlockGeometry.build(size, window, self.base_window, shifted, self.frag_bias)
                      for shifted in (False, True)]
        for blk in self.blocks:
            x = blk(x, geometries[int(blk.shifted)])
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed3D(nn.Module):
    def __init__(self, patch_size: Triple, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> channels-last tokens (B, D, H', W', embed_dim)."""
        _, _, t, h, w = x.shape
        pt, ph, pw = self.patch_size
        pads = (-w % pw, -h % ph, -t % pt)
        if any(pads):
            x = F.pad(x, (0, pads[0], 0, pads[1], 0, pads[2]))
        return self.norm(self.proj(x).permute(0, 2, 3, 4, 1))


class SwinTransformer3D(nn.Module):
    """Video Swin-T with GRPB. Input (B, 3, T, H, W) normalised; output (B, C, T/2, H/32, W/32)."""

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed3D(cfg.patch_size, 3, cfg.embed_dim)
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(cfg.depths):
            start = sum(cfg.depths[:i])
            self.layers.append(
                SwinStage(
                    dim=cfg.embed_dim * 2**i,
                    depth=depth,
                    num_heads=cfg.num_heads[i],
                    base_window=cfg.window_size,
                    mlp_ratio=cfg.mlp_ratio,
                    drop_paths=rates[start : start + depth],
                    frag_bias=cfg.frag_biases[i],
                    downsample=i < len(cfg.depths) - 1,
                )
            )
        self.norm = nn.LayerNorm(cfg.num_features)
        self.apply(_init_weights)

    @property
    def num_features(self) -> int:
        return self.cfg.num_features

    def set_matmul_dtype(self, dtype: torch.dtype) -> "SwinTransformer3D":
        """Store the linear layers' weights in `dtype` (bf16: ~2x faster); everything else stays fp32."""
        for m in self.modules():
            if isinstance(m, Linear):
                m.to(dtype)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, T, H, W) clips, got {tuple(x.shape)}")
        window = adaptive_window(self.cfg, tuple(x.shape[2:]))  # type: ignore[arg-type]
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x, window)
        return self.norm(x).permute(0, 4, 1, 2, 3)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
