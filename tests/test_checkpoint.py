"""Checkpoint interop: reference SecureVQA layout, mmaction Video Swin, our own format, S3, safety."""

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from model import CheckpointMismatchError, InterEmbedder, SecureVQA, create_model, get_config, make_generator
from model.api import load_inter_weights, load_intra_pretrained, load_securevqa_weights, save_checkpoint
from model.checkpoint import read_checkpoint

# Every key and shape of a reference SecureVQA checkpoint, kept beside the repository (docs/design.md §5).
KEYS_JSON = Path(__file__).resolve().parents[2] / "shared" / "reference" / "securevqa_checkpoint_keys.json"
TINY = get_config("tiny")


def reference_checkpoint() -> dict:
    """A checkpoint with exactly the reference layout (every key and shape), random values."""
    layout = json.loads(KEYS_JSON.read_text())["keys"]
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, shape in layout.items():
        if k.endswith("relative_position_index"):
            sd[k] = torch.zeros(shape, dtype=torch.long)
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.02
    return {"state_dict": sd, "validation_results": {"srcc": 0.0}}


@pytest.fixture(scope="module")
def paper_model():
    return SecureVQA(get_config("paper"))


def test_reference_layout_loads_completely(paper_model):
    ckpt = reference_checkpoint()
    load_securevqa_weights(paper_model, ckpt)
    sd = ckpt["state_dict"]
    assert torch.equal(paper_model.intra.layers[2].blocks[5].attn.fragment_position_bias_table,
                       sd["fragments_backbone.layers.2.blocks.5.attn.fragment_position_bias_table"])
    assert torch.equal(paper_model.head.fusion.to_intra[0].weight,
                       sd["vqa_head.Embeddings_fusion.Intra.bottleneckBlock.0.weight"])
    assert torch.equal(paper_model.head.fc_last.bias, sd["vqa_head.fc_last.bias"])


def test_mismatch_names_missing_unexpected_and_misshaped_keys(paper_model):
    ckpt = reference_checkpoint()
    sd = ckpt["state_dict"]
    before = paper_model.head.fc_hid.weight.clone()
    del sd["vqa_head.fc_hid.bias"]
    sd["vqa_head.extra.weight"] = torch.zeros(3)
    sd["fragments_backbone.norm.weight"] = torch.zeros(5)
    with pytest.raises(CheckpointMismatchError) as err:
        load_securevqa_weights(paper_model, ckpt, source="bad.pt")
    msg = str(err.value)
    assert "bad.pt" in msg
    assert "missing keys (1): head.fc_hid.bias" in msg
    assert "unexpected keys (1): vqa_head.extra.weight" in msg
    assert "intra.norm.weight (checkpoint (5,), model (768,))" in msg
    assert torch.equal(paper_model.head.fc_hid.weight, before), "a failed load must change nothing"


def test_wrong_preset_for_checkpoint_is_a_clear_error():
    with pytest.raises(CheckpointMismatchError, match="wrongly-shaped keys"):
        load_securevqa_weights(SecureVQA(TINY), reference_checkpoint())


def test_mmaction_video_swin_initialises_backbone(tmp_path):
    donor = SecureVQA(TINY)
    sd = {f"backbone.{k}": v for k, v in donor.intra.state_dict().items()
          if not k.endswith("fragment_position_bias_table")}
    sd["cls_head.fc_cls.weight"] = torch.randn(400, TINY.intra_dim)
    sd["cls_head.fc_cls.bias"] = torch.randn(400)
    sd["backbone.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(392, 392, dtype=torch.long)
    path = tmp_path / "swin_tiny_k400.pth"
    torch.save({"meta": {"epoch": 30}, "state_dict": sd}, path)
    model = SecureVQA(TINY)
    for name, p in model.intra.named_parameters():
        if name.endswith("fragment_position_bias_table"):
            torch.nn.init.normal_(p)
    load_intra_pretrained(model, str(path))
    for k, v in model.intra.state_dict().items():
        if k.endswith("fragment_position_bias_table"):
            assert not v.any(), f"{k} must start at zero"
        else:
            assert torch.equal(v, donor.intra.state_dict()[k]), k


@pytest.mark.slow  # two tiny models scoring at 224 px: 6 s of CPU
def test_own_format_roundtrip_scores_identically(tmp_path):
    torch.manual_seed(0)
    vqa, inter = SecureVQA(TINY).eval(), InterEmbedder(TINY)
    path = tmp_path / "ckpt" / "securevqa_tiny.pt"
    save_checkpoint(str(path), vqa, inter, metadata={"trained_on": "nothing"})
    vqa2, inter2 = create_model("paper", checkpoint=str(path))  # the checkpoint's own config wins
    assert vqa2.cfg == TINY
    clips = torch.randint(0, 256, (1, 1, 3, 32, 224, 224), dtype=torch.uint8)
    seg = torch.randint(0, 256, (1, 16, 3, 32, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        emb, emb2 = inter(seg, generator=make_generator(0)), inter2(seg, generator=make_generator(0))
        assert torch.equal(emb, emb2)
        a = vqa.score(clips, emb, generator=make_generator(5))
        b = vqa2.score(clips, emb2, generator=make_generator(5))
    assert torch.equal(a, b)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoints_never_execute_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        read_checkpoint(str(path))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        create_model("tiny", checkpoint=str(tmp_path / "nope.pt"))


def test_checkpoint_from_s3(tmp_path, s3_endpoint):
    import s3fs

    torch.manual_seed(1)
    vqa = SecureVQA(TINY)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("models")
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    save_checkpoint("s3://models/tiny/securevqa.pt", vqa, storage_options=opts)
    assert fs.exists("models/tiny/securevqa.pt")
    vqa2, _ = create_model(checkpoint="s3://models/tiny/securevqa.pt", storage_options=opts)
    for (k, a), (_, b) in zip(vqa.state_dict().items(), vqa2.state_dict().items()):
        assert torch.equal(a, b), k


def test_pytorchvideo_slowfast_through_create_model(tmp_path):
    torch.manual_seed(2)
    donor = InterEmbedder(TINY)
    state = {}
    for k, v in donor.fastpath.state_dict().items():
        block, rest = k.split(".", 2)[1], k.split(".", 2)[2]
        state[f"blocks.{block}.multipathway_blocks.1.{rest}"] = v.clone().normal_() if v.is_floating_point() else v
        state[f"blocks.{block}.multipathway_blocks.0.{rest}"] = torch.zeros(1)  # slow pathway: ignored
    state["blocks.6.proj.weight"] = torch.zeros(400, 2304)  # classifier: ignored
    path = tmp_path / "SLOWFAST_8x8_R50.pyth"
    torch.save({"model_state": state, "epoch": 196}, path)
    _, inter = create_model("tiny", inter_checkpoint=str(path))
    for k, v in inter.fastpath.state_dict().items():
        block, rest = k.split(".", 2)[1], k.split(".", 2)[2]
        assert torch.equal(v, state[f"blocks.{block}.multipathway_blocks.1.{rest}"]), k
    with pytest.raises(ValueError, match="holds no SlowFast"):
        load_inter_weights(inter, reference_checkpoint())
