"""Frozen inter-branch backbone: the fast pathway of SlowFast R50 (8x8, Kinetics-400), pure PyTorch.

Only the fast pathway is built (docs/design.md §2.2): the lateral connections of SlowFast go fast -> slow, so
the fast pathway's res5 output does not depend on the slow pathway at all.

Layout (module names chosen so that `state_dict()` keys equal pytorchvideo's fast-pathway keys with
`.multipathway_blocks.1` removed, see `model.checkpoint.pytorchvideo_to_fastpath`):

    blocks.0             stem: conv (k=stem_kernel, stride (1,2,2)), norm, ReLU, max-pool (1,3,3)/(1,2,2)
    blocks.{1..4}        res2..res5, each `res_blocks.{j}`:
        branch1_conv/norm    1x1x1 projection shortcut with stride (1,s,s) (first block of a stage)
        branch2.conv_a/norm_a  (kt,1,1) temporal conv, padding (kt//2,0,0), no stride
        branch2.conv_b/norm_b  (1,3,3) spatial conv, stride (1,s,s)   <- the stage's spatial stride
        branch2.conv_c/norm_c  1x1x1 expansion to the stage width
        out = ReLU(shortcut + branch2)

Convolutions have no bias; every norm is BatchNorm3d. Input: normalised float (B, 3, T, H, W);
`forward` returns res5 features (B, C, T, H/32, W/32), `embed` the global average (B, C).

Speed (all exact up to float rounding): by default (`use_2d=True`) activations after the stem are
channels_last_3d and every factorised kernel runs as a 2-D conv on a free view: (1,3,3) and 1x1x1
kernels per frame (frames folded into the batch), (3,1,1) kernels over (T, H*W). On the 2-core CPU
this is about 1.6x faster than plain conv3d, which PyTorch partly routes to its slow im2col kernel
for these thin layers. `set_use_2d(False)` restores plain conv3d.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import FastPathwayConfig, Triple

__all__ = [
    "FastPathway",
    "FactorizedConv3d",
    "FastStem",
    "FastResStage",
    "FastResBlock",
    "FastBottleneck",
    "fastpath_config_from_state_dict",
]


class FactorizedConv3d(nn.Conv3d):
    """`nn.Conv3d` (same parameters, same state_dict) that can run its factorised kernels as 2-D convs.

    With `use_2d` set, a (1, kh, kw) kernel runs as a 2-D conv over frames folded into the batch, and a
    (kt, 1, 1) kernel as a (kt, 1) 2-D conv over (T, H*W). On a channels_last_3d input both reshapes are
    free views and oneDNN's channels-last 2-D kernels apply; the result is the same convolution (float
    rounding aside). Any other kernel, or `use_2d` off, runs the ordinary `conv3d`.
    """

    use_2d: bool = True

    def _mode(self) -> str:
        if isinstance(self.padding, str) or self.padding_mode != "zeros" or self.dilation != (1, 1, 1):
            return "3d"
        kt, kh, kw = self.kernel_size
        if kt == 1 and self.stride[0] == 1 and self.padding[0] == 0:
            return "spatial"
        if kh == kw == 1 and self.stride[1:] == (1, 1) and self.padding[1:] == (0, 0):
            return "temporal"
        return "3d"

    def forward(self, x: Tensor) -> Tensor:
        mode = self._mode() if self.use_2d and x.dim() == 5 else "3d"
        if mode == "spatial":
            b, t = x.shape[0], x.shape[2]
            w2 = self.weight[:, :, 0]
            y = F.conv2d(_frames(x), w2, self.bias, self.stride[1:], self.padding[1:], 1, self.groups)
            return _unframes(y, b, t)
        if mode == "temporal":
            b, c, t, h, w = x.shape
            # (B, C, T, H, W) -> (B, C, T, H*W) through NTHWC, so a channels_last_3d input gives a view
            # with proper channels-last strides (a plain reshape may leave ambiguous strides on size-1
            # dims, which makes conv2d fall back to a contiguous copy).
            seq = x.permute(0, 2, 3, 4, 1).reshape(b, t, h * w, c).permute(0, 3, 1, 2)
            w2 = self.weight[..., 0]
            y = F.conv2d(seq, w2, self.bias, (self.stride[0], 1), (self.padding[0], 0), 1, self.groups)
            co, to = y.shape[1], y.shape[2]
            return y.permute(0, 2, 3, 1).reshape(b, to, h, w, co).permute(0, 4, 1, 2, 3)
        return super().forward(x)


def _frames(x: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W); a view with channels-last strides for channels_last_3d input."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 3, 4, 1).reshape(b * t, h, w, c).permute(0, 3, 1, 2)


def _unframes(y: Tensor, b: int, t: int) -> Tensor:
    """(B*T, C, H, W) -> (B, C, T, H, W); a view with channels_last_3d strides for channels-last input."""
    _, c, h, w = y.shape
    return y.permute(0, 2, 3, 1).reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)


def _conv(cin: int, cout: int, kernel: Triple, stride: Triple = (1, 1, 1)) -> FactorizedConv3d:
    padding = tuple(k // 2 for k in kernel)
    return FactorizedConv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False)


def _max_pool_1x3x3(x: Tensor, use_2d: bool) -> Tensor:
    """Max-pool kernel (1,3,3), stride (1,2,2), padding (0,1,1); per frame via max_pool2d when use_2d."""
    if not use_2d:
        return F.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    return _unframes(F.max_pool2d(_frames(x), 3, 2, 1), x.shape[0], x.shape[2])


class FastStem(nn.Module):
    """conv -> BN -> ReLU -> max-pool (1,3,3) stride (1,2,2)."""

    def __init__(self, cfg: FastPathwayConfig) -> None:
        super().__init__()
        self.conv = _conv(cfg.in_channels, cfg.stem_width, cfg.stem_kernel, stride=(1, 2, 2))
        self.norm = nn.BatchNorm3d(cfg.stem_width, eps=cfg.bn_eps)
        self.act = nn.ReLU(inplace=True)
        self.use_2d = True

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm(self.conv(x)))
        if self.use_2d:
            # Channels-last from here on: the per-frame 2-D kernels then reshape without copies.
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return _max_pool_1x3x3(x, self.use_2d)


class FastBottleneck(nn.Module):
    """branch2 of a res block: (kt,1,1) -> (1,3,3) with stride -> 1x1x1, BN after each, ReLU between."""

    def __init__(
        self, cin: int, inner: int, cout: int, spatial_stride: int, temporal_kernel: int, eps: float
    ) -> None:
        super().__init__()
        self.conv_a = _conv(cin, inner, (temporal_kernel, 1, 1))
        self.norm_a = nn.BatchNorm3d(inner, eps=eps)
        self.act_a = nn.ReLU(inplace=True)
        self.conv_b = _conv(inner, inner, (1, 3, 3), stride=(1, spatial_stride, spatial_stride))
        self.norm_b = nn.BatchNorm3d(inner, eps=eps)
        self.act_b = nn.ReLU(inplace=True)
        self.conv_c = _conv(inner, cout, (1, 1, 1))
        self.norm_c = nn.BatchNorm3d(cout, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.act_b(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class FastResBlock(nn.Module):
    """ReLU(shortcut(x) + branch2(x)); the shortcut is a strided 1x1x1 conv + BN when shapes change."""

    def __init__(self, cin: int, cout: int, spatial_stride: int, temporal_kernel: int, eps: float) -> None:
        super().__init__()
        if cin != cout or spatial_stride != 1:
            stride = (1, spatial_stride, spatial_stride)
            self.branch1_conv: nn.Module | None = _conv(cin, cout, (1, 1, 1), stride=stride)
            self.branch1_norm: nn.Module | None = nn.BatchNorm3d(cout, eps=eps)
        else:
            self.branch1_conv = None
            self.branch1_norm = None
        self.branch2 = FastBottleneck(cin, cout // 4, cout, spatial_stride, temporal_kernel, eps)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        if self.branch1_conv is not None:
            shortcut = self.branch1_norm(self.branch1_conv(x))
        # branch2 never works in place on x, so the shortcut may alias the input safely.
        return self.act(self.branch2(x).add_(shortcut))


class FastResStage(nn.Module):
    def __init__(
        self, cin: int, cout: int, depth: int, spatial_stride: int, temporal_kernel: int, eps: float
    ) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(
            FastResBlock(cin if j == 0 else cout, cout, spatial_stride if j == 0 else 1, temporal_kernel, eps)
            for j in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x


class FastPathway(nn.Module):
    """SlowFast R50 fast pathway (stem + res2..res5), frozen feature extractor of the inter branch."""

    def __init__(self, cfg: FastPathwayConfig | None = None, *, use_2d: bool = True) -> None:
        super().__init__()
        cfg = cfg or FastPathwayConfig()
        self.cfg = cfg
        blocks: list[nn.Module] = [FastStem(cfg)]
        cin = cfg.stem_width
        for depth, width, stride in zip(cfg.stage_depths, cfg.stage_widths, cfg.stage_spatial_strides):
            if width % 4:
                raise ValueError(f"stage width {width} is not divisible by 4 (bottleneck = width // 4)")
            blocks.append(FastResStage(cin, width, depth, stride, cfg.temporal_kernel, cfg.bn_eps))
            cin = width
        self.blocks = nn.ModuleList(blocks)
        self.set_use_2d(use_2d)

    def set_use_2d(self, use_2d: bool) -> "FastPathway":
        """Run factorised kernels as channels-last 2-D convs (default, faster) or as plain conv3d."""
        self.use_2d = bool(use_2d)
        for m in self.modules():
            if isinstance(m, (FactorizedConv3d, FastStem)):
                m.use_2d = self.use_2d
        return self

    @property
    def num_features(self) -> int:
        return self.cfg.num_features

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, T, H, W) normalised float -> res5 features (B, C, T, H/32, W/32)."""
        if x.dim() != 5 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"expected (B, {self.cfg.in_channels}, T, H, W), got {tuple(x.shape)}")
        for block in self.blocks:  # with use_2d, the stem returns channels_last_3d features
            x = block(x)
        return x.contiguous() if self.use_2d else x

    @staticmethod
    def pool(features: Tensor) -> Tensor:
        """Global average pool over (T, H, W): (B, C, T, H, W) -> (B, C)."""
        return features.mean(dim=(2, 3, 4))

    def embed(self, x: Tensor) -> Tensor:
        """(B, C_in, T, H, W) -> (B, C) pooled res5 features."""
        return self.pool(self(x))

    @torch.no_grad()
    def calibrate_batchnorm_(self, batches: Iterable[Tensor]) -> int:
        """Replace every BatchNorm's running statistics by those of real inputs; returns the number of
        samples seen.

        `batches`: normalised float (B, C_in, T, H, W) tensors. A randomly initialised pathway with the
        default statistics (mean 0, variance 1) shrinks its input at every layer: the pooled embedding
        has an RMS of about 0.007 against 0.5 for the intra features at the fusion input, so the inter
        branch carries no signal (docs/training.md, "The demo model"). Estimating the statistics from
        real clips (a data-dependent initialisation; weights stay frozen and untouched) makes every
        layer's output unit-scale. Pretrained weights (SlowFast K400) carry their own statistics and
        need none of this. One pass in train mode: each BatchNorm averages its input's batch statistics
        over all batches (momentum None); upstream layers normalise by batch statistics meanwhile,
        which is close to their eval-mode output for batches of several clips.
        Raises ValueError when `batches` is empty.
        """
        norms = [m for m in self.modules() if isinstance(m, nn.BatchNorm3d)]
        saved = [(m.momentum, m.training) for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over every batch
            m.train()
        seen = 0
        try:
            for x in batches:
                self(x)
                seen += x.shape[0]
        finally:
            for m, (momentum, training) in zip(norms, saved):
                m.momentum = momentum
                m.train(training)
        if not seen:
            raise ValueError("calibrate_batchnorm_ needs at least one batch of real clips")
        return seen

    @torch.no_grad()
    def difference_stem_(self, lag: int = 1, channels: int | None = None) -> "FastPathway":
        """Turn the stem into temporal-difference filters: output channel c applies its own spatial filter
        (the kernel summed over time) to frame t + lag minus frame t, with alternate channels taking the
        opposite sign so that the ReLU after the stem passes both directions of change.

        Why: a randomly initialised pathway (the `tiny-cpu` stand-in for Kinetics-pretrained SlowFast) is
        dominated by appearance and carries no motion a read-out finds; a frame-hold probe (none / k 2 /
        k 4) on its embedding is at chance, on the difference stem's 0.87 across unseen contents
        (docs/training.md, "A temporal-difference stem for the fast pathway"). The guardian map, one per
        video, cancels in the difference. Shapes are unchanged; BatchNorm statistics must be estimated
        again afterwards (`calibrate_batchnorm_`). `channels`: only the last that many stem channels change
        (None: all), so the others keep seeing appearance. Raises ValueError when the stem's temporal kernel
        cannot reach `lag` frames ahead of its centre, `channels` is not in 1..stem width, or those channels are
        difference filters already.
        """
        conv = self.blocks[0].conv
        kt = conv.weight.shape[2]
        centre = kt // 2
        if lag < 1 or centre + lag >= kt:
            raise ValueError(f"a stem with temporal kernel {kt} cannot take a difference over {lag} frame(s)")
        width = conv.weight.shape[0]
        n = width if channels is None else channels
        if not 1 <= n <= width:
            raise ValueError(f"channels must be in 1..{width} (the stem's width), got {channels}")
        spatial = conv.weight.sum(dim=2)  # (C_out, C_in, kh, kw)
        chosen = slice(width - n, width)
        if (spatial[chosen].abs().amax(dim=(1, 2, 3)) <= 1e-6 * conv.weight[chosen].abs().amax(dim=(1, 2, 3, 4))).any():
            # a difference filter sums to zero over time: doing it again would zero the stem
            raise ValueError("the stem is already a temporal-difference filter bank there (kernels that sum to zero "
                             "over time): a continued run keeps its checkpoint's stem")
        sign = torch.ones(width, 1, 1, 1, dtype=spatial.dtype)
        sign[1::2] = -1
        new = torch.zeros_like(conv.weight)
        new[:, :, centre] = -sign * spatial
        new[:, :, centre + lag] = sign * spatial
        conv.weight[width - n:] = new[width - n:]
        return self

    def freeze_(self) -> "FastPathway":
        """Eval mode (BatchNorm uses running statistics) and no gradients: the frozen inter backbone."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self


_STAGE_KEY = re.compile(r"^blocks\.(\d+)\.res_blocks\.(\d+)\.")


def fastpath_config_from_state_dict(state_dict: Mapping[str, Tensor], **overrides) -> FastPathwayConfig:
    """Infer a `FastPathwayConfig` from the key shapes of a fast-pathway state dict.

    Accepts `FastPathway` naming or a full pytorchvideo SlowFast state dict (converted with
    `pytorchvideo_to_fastpath`). Inferred: in_channels, stem_width, stem_kernel, stage_depths,
    stage_widths, temporal_kernel. Spatial strides and BN eps are not visible in shapes: they keep the
    SlowFast pattern (1, 2, 2, ...) and the default eps unless given in `overrides`.
    """
    if any(".multipathway_blocks." in k for k in state_dict):
        from .checkpoint import pytorchvideo_to_fastpath

        state_dict = pytorchvideo_to_fastpath(state_dict)
    try:
        stem_w = state_dict["blocks.0.conv.weight"]
    except KeyError:
        raise ValueError("not a fast-pathway state dict: no 'blocks.0.conv.weight'") from None
    stem_width, in_channels, *stem_kernel = stem_w.shape

    depths: dict[int, int] = {}
    for k in state_dict:
        m = _STAGE_KEY.match(k)
        if m:
            s, j = int(m.group(1)), int(m.group(2))
            depths[s] = max(depths.get(s, 0), j + 1)
    if not depths or sorted(depths) != list(range(1, len(depths) + 1)):
        raise ValueError(f"stage blocks must be numbered 1..N without gaps, found {sorted(depths)}")

    widths, tks = [], set()
    cin = stem_width
    for s in sorted(depths):
        for j in range(depths[s]):
            p = f"blocks.{s}.res_blocks.{j}.branch2."
            try:
                wa, wc = state_dict[p + "conv_a.weight"], state_dict[p + "conv_c.weight"]
            except KeyError as e:
                raise ValueError(f"missing {e.args[0]} in fast-pathway state dict") from None
            width = wc.shape[0]
            if j == 0:
                widths.append(width)
            if wa.shape[0] * 4 != width or wa.shape[1] != cin:
                raise ValueError(
                    f"{p}conv_a.weight has shape {tuple(wa.shape)}: expected ({width // 4}, {cin}, ...) "
                    f"for a bottleneck of width {width} with {cin} input channels"
                )
            tks.add(int(wa.shape[2]))
            cin = width
    if len(tks) != 1:
        raise ValueError(f"conv_a temporal kernels differ between blocks: {sorted(tks)}")

    n = len(widths)
    kwargs = dict(
        in_channels=int(in_channels),
        stem_width=int(stem_width),
        stem_kernel=tuple(int(k) for k in stem_kernel),
        stage_depths=tuple(depths[s] for s in sorted(depths)),
        stage_widths=tuple(int(w) for w in widths),
        stage_spatial_strides=(1,) + (2,) * (n - 1),
        temporal_kernel=tks.pop(),
    )
    kwargs.update(overrides)
    return FastPathwayConfig(**kwargs)
