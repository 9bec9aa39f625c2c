"""Golden equivalence with the reference implementation: Swin-GRPB backbone and fusion head.

The fixture is a copy of ../shared/reference/golden_swin_grpb_fusion.pt, described in docs/design.md §5.
The fixture path comes from SECUREVQA_GOLDEN_SWIN when set, so the same test checks other fixtures of
the same format (other sizes, other clip lengths). The backbone is built from the fixture's config.
"""

import os
from pathlib import Path

import pytest
import torch

from model.api import _sub
from model.checkpoint import load_state_dict_strict, read_checkpoint, reference_to_securevqa
from model.config import HeadConfig, SwinConfig
from model.fusion import FusionHead
from model.swin import SwinTransformer3D
from tests.helpers import FIXTURES

GOLDEN = Path(os.environ.get("SECUREVQA_GOLDEN_SWIN", FIXTURES / "golden_swin_grpb_fusion.pt"))
TOL = 1e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def golden():
    g = read_checkpoint(GOLDEN)
    sd = {k: v.float() for k, v in g["state_dict"].items()}  # stored as float16
    return g, reference_to_securevqa(sd)


def swin_config_from_fixture(c: dict) -> SwinConfig:
    return SwinConfig(
        embed_dim=c["embed_dim"],
        depths=tuple(c["depths"]),
        num_heads=tuple(c["num_heads"]),
        patch_size=tuple(c["patch_size"]),
        window_size=tuple(c["window_size"]),
        frag_biases=tuple(bool(b) for b in c["frag_biases"]),
        base_input_size=tuple(c["base_x_size"]),
    )


def test_swin_grpb_matches_reference(golden):
    g, sd = golden
    swin = SwinTransformer3D(swin_config_from_fixture(g["config"])).eval()
    load_state_dict_strict(swin, _sub(sd, "intra."), source=str(GOLDEN))
    mean = g["normalize_mean"].view(3, 1, 1, 1)
    std = g["normalize_std"].view(3, 1, 1, 1)
    x = ((g["backbone_input_uint8"].float() - mean) / std)[None]
    with torch.no_grad():
        out = swin(x)
    ref = g["backbone_output"]
    assert out.shape == ref.shape
    err = rel_err(out, ref)
    print(f"swin-grpb relative error {err:.3e}, max abs diff {(out - ref).abs().max():.3e}")
    assert err < TOL


def test_fragment_bias_tables_matter(golden):
    """Guard against a vacuous pass: zeroing the GRPB fragment tables must change the output."""
    g, sd = golden
    swin = SwinTransformer3D(swin_config_from_fixture(g["config"])).eval()
    load_state_dict_strict(swin, _sub(sd, "intra."), source=str(GOLDEN))
    x = ((g["backbone_input_uint8"].float() - 128.0) / 58.0)[None]
    with torch.no_grad():
        base = swin(x)
        for name, p in swin.named_parameters():
            if name.endswith("fragment_position_bias_table"):
                p.add_(torch.randn_like(p))
        changed = swin(x)
    assert rel_err(changed, base) > 1e-3


def test_fusion_head_matches_reference(golden):
    g, sd = golden
    head_sd = _sub(sd, "head.")
    intra_dim = head_sd["fusion.to_intra.4.weight"].shape[0]
    inter_dim = head_sd["fusion.to_inter.4.weight"].shape[0]
    head = FusionHead(intra_dim, inter_dim, HeadConfig(hidden_dim=head_sd["fc_hid.weight"].shape[0])).eval()
    load_state_dict_strict(head, head_sd, source=str(GOLDEN))
    with torch.no_grad():
        out = head(g["head_intra_input"].float(), g["head_inter_input"].flatten(0, 1))
    ref = g["head_output"][:, 0, :, 0, 0]
    err = rel_err(out, ref)
    print(f"fusion head relative error {err:.3e}")
    assert err < TOL
