"""`--precision auto`: fp32 or bf16 per model (intra, inter) and per machine, whichever measures faster.

Machines differ more than a rule could say: on an Intel Xeon with AMX the bf16 intra forward was 2.0x fp32
while the bf16 fast pathway ran 0.83x (slower); on CPUs without native bf16 both lose. So at start-up a
short calibration times one forward pass of each model in fp32 and in bf16 on inputs of the preset's
shapes (medians of `REPEATS`, after a warm-up) and keeps the faster, bf16 only when it wins by at least
`MARGIN`. The result is cached per machine and model (`cache_path()`: CPU model name, its bf16 flags,
torch version, threads, config version), so a job calibrates once per CPU type and every later actor
reads the choice. On a GPU, auto is bf16 (autocast). Scores stay within the agreement already tested for
bf16 (tests/test_precision.py); each row's `worker` says which precision computed it.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from model import InterEmbedder, SecureVQA, make_generator
from pipeline.machine import bf16_flags, cpu_name

log = logging.getLogger("securevqa.precision")

PRECISIONS = ("fp32", "bf16", "auto")
REPEATS = 3
MARGIN = 1.1  # bf16 must be this much faster: a tie keeps fp32's exactness


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision of each model, and why (the timings, or a rule)."""

    intra: str
    inter: str
    why: str

    def label(self) -> str:
        return f"precision=intra:{self.intra},inter:{self.inter}"


def cache_path() -> Path:
    """Where calibrations are kept: $SECUREVQA_CACHE_DIR, else ~/.cache/securevqa, file precision.json."""
    root = os.environ.get("SECUREVQA_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "securevqa")
    return Path(root) / "precision.json"


def machine_key(vqa: SecureVQA) -> str:
    return "|".join([cpu_name(), ",".join(bf16_flags()) or "no-bf16-flags", f"torch={torch.__version__}",
                     f"threads={torch.get_num_threads()}", vqa.cfg.name, vqa.cfg.version()])


def _median_s(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def calibrate(vqa: SecureVQA, inter: InterEmbedder, repeats: int = REPEATS) -> dict[str, float]:
    """Seconds of one forward pass of each model in each precision (CPU), on random uint8 inputs of the
    preset's shapes: one intra clip with its inter embedding, and one inter segment. Leaves both models
    in fp32."""
    s = vqa.cfg.sampling
    g = torch.Generator().manual_seed(0)
    clip = torch.randint(0, 256, (1, 1, 3, s.clip_len, s.fragment_size, s.fragment_size), dtype=torch.uint8, generator=g)
    emb = torch.randn(1, s.inter_segments, vqa.cfg.inter_dim, generator=g)
    seg = torch.randint(0, 256, (1, 1, 3, s.inter_segment_len, s.inter_size, s.inter_size), generator=g).float()
    out = {}
    with torch.inference_mode():
        for p in ("fp32", "bf16"):
            vqa.set_precision(p)
            inter.set_precision(p)
            out[f"intra_{p}"] = _median_s(lambda: vqa(clip, emb, generator=make_generator(0)), repeats)
            out[f"inter_{p}"] = _median_s(lambda: inter(seg, generator=make_generator(0)), repeats)
    vqa.set_precision("fp32")
    inter.set_precision("fp32")
    return out


def _choose(times: dict[str, float], model: str) -> str:
    return "bf16" if times[f"{model}_fp32"] >= MARGIN * times[f"{model}_bf16"] else "fp32"


def resolve_auto(vqa: SecureVQA, inter: InterEmbedder, device: torch.device, *, use_cache: bool = True
                 ) -> PrecisionChoice:
    """The precision of each model for `--precision auto` on this machine (see the module doc); the
    models are left in fp32 for the caller to set."""
    if device.type == "cuda":
        return PrecisionChoice("bf16", "bf16", "GPU: bf16 autocast")
    key = machine_key(vqa)
    path = cache_path()
    cached: dict = {}
    if use_cache:
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = {}
    source = "cached"
    times = cached.get(key)
    if times is None:
        times = calibrate(vqa, inter)
        source = "calibrated"
        if use_cache:
            try:  # write to a temporary name, then rename: two actors calibrating at once never tear it
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps({**cached, key: times}, indent=1))
                tmp.replace(path)
            except OSError as exc:
                log.warning("precision auto: cannot cache the calibration at %s (%s)", path, exc)
    why = (f"{source} on {cpu_name()} ({','.join(bf16_flags()) or 'no bf16 flags'}): intra fp32/bf16 "
           f"{times['intra_fp32'] * 1e3:.0f}/{times['intra_bf16'] * 1e3:.0f} ms, inter "
           f"{times['inter_fp32'] * 1e3:.0f}/{times['inter_bf16'] * 1e3:.0f} ms")
    return PrecisionChoice(_choose(times, "intra"), _choose(times, "inter"), why)


def apply_choice(vqa: SecureVQA, inter: InterEmbedder, choice: PrecisionChoice, device: torch.device) -> None:
    """Set each model to its chosen precision (bf16 is autocast on a GPU, stored bf16 weights on a CPU)."""
    from model.device import uses_autocast

    vqa.set_precision(choice.intra, amp=uses_autocast(choice.intra, device.type))  # type: ignore[arg-type]
    inter.set_precision(choice.inter, amp=uses_autocast(choice.inter, device.type))  # type: ignore[arg-type]


def precision_label(vqa: SecureVQA, inter: InterEmbedder) -> str:
    """What a row's `worker` says of the arithmetic that computed it."""
    return f"precision=intra:{vqa.precision},inter:{inter.precision}"
