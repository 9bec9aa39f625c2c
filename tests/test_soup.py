"""Weight averaging (model/soup.py, `securevqa average`): the average is the weighted mean of the trained
weights, reads back as any checkpoint, and refuses checkpoints whose fast pathways or architectures differ."""

from __future__ import annotations

import pytest
import torch

from jobs.cli import main
from model import create_model
from model.api import average_weights, save_checkpoint
from model.checkpoint import read_checkpoint
from model.soup import average_checkpoints, soup_weights


def _pair(tmp_path, *, same_inter: bool = True):
    """Two tiny-cpu checkpoints with different trained weights; one fast pathway unless same_inter is False."""
    a_vqa, a_inter = create_model("tiny-cpu", init_seed=1)
    b_vqa, b_inter = create_model("tiny-cpu", init_seed=2)
    if same_inter:
        b_inter.fastpath.load_state_dict(a_inter.fastpath.state_dict())
    paths = [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]
    save_checkpoint(paths[0], a_vqa, a_inter)
    save_checkpoint(paths[1], b_vqa, b_inter)
    return paths, a_vqa, b_vqa


def test_soup_weights_are_scaled_and_checked():
    assert soup_weights(2) == [0.5, 0.5]
    assert soup_weights(3, [1, 1, 2]) == [0.25, 0.25, 0.5]
    for bad in ([1.0], [1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [float("nan"), 1.0, 1.0], [float("inf"), 1.0, 1.0]):
        with pytest.raises(ValueError):
            soup_weights(3, bad)
    with pytest.raises(ValueError, match="at least 2"):
        soup_weights(1)


def test_the_average_is_the_weighted_mean_and_loads_as_a_checkpoint(tmp_path):
    paths, a, b = _pair(tmp_path)
    out = str(tmp_path / "soup.pt")
    meta = average_weights(paths, out, [1.0, 3.0])
    assert meta["average"]["weights"] == [0.25, 0.75]
    vqa, inter = create_model(checkpoint=out)
    sa, sb, ss = a.state_dict(), b.state_dict(), vqa.state_dict()
    floats = [k for k, v in sa.items() if v.is_floating_point()]
    assert floats
    for k in floats:
        torch.testing.assert_close(ss[k], 0.25 * sa[k] + 0.75 * sb[k], rtol=1e-6, atol=1e-6)
    # Members differ, so the average differs from both: the check above could fail.
    k = floats[0]
    assert not torch.allclose(sa[k], sb[k])
    # The fast pathway is the members' own.
    a_ckpt = read_checkpoint(paths[0])
    for name, v in inter.fastpath.state_dict().items():
        assert torch.equal(v, a_ckpt["inter"][name])
    assert read_checkpoint(out)["metadata"]["average"]["sources"] == paths


def test_different_fast_pathways_are_refused_with_the_keys_named(tmp_path):
    paths, _, _ = _pair(tmp_path, same_inter=False)
    with pytest.raises(ValueError, match=r"b\.pt has other inter \(fast pathway\) weights than .*a\.pt "
                                         r"\(\d+ keys differ, e\.g\. blocks\.0\.conv\.weight"):
        average_checkpoints([read_checkpoint(p) for p in paths], sources=paths)


def test_different_architectures_and_foreign_layouts_are_refused(tmp_path):
    paths, _, _ = _pair(tmp_path)
    tiny_vqa, tiny_inter = create_model("tiny", init_seed=1)
    other = str(tmp_path / "tiny.pt")
    save_checkpoint(other, tiny_vqa, tiny_inter)
    with pytest.raises(ValueError, match="another architecture"):
        average_checkpoints([read_checkpoint(paths[0]), read_checkpoint(other)], sources=[paths[0], other])
    foreign = {"state_dict": read_checkpoint(paths[1])["securevqa"]}
    with pytest.raises(ValueError, match="not a SecureVQA checkpoint"):
        average_checkpoints([read_checkpoint(paths[0]), foreign])


def test_cli_writes_the_average_and_says_why_it_refuses(tmp_path, capsys):
    paths, _, _ = _pair(tmp_path)
    out = tmp_path / "soup.pt"
    assert main(["average", *paths, "--output", str(out), "--shares", "1,1", "-q"]) == 0
    assert out.exists() and '"weights": [0.5, 0.5]' in capsys.readouterr().out
    (tmp_path / "x").mkdir()
    bad, _, _ = _pair(tmp_path / "x", same_inter=False)
    assert main(["average", *bad, "--output", str(tmp_path / "no.pt"), "-q"]) == 2
    assert "fast pathway" in capsys.readouterr().err
    assert not (tmp_path / "no.pt").exists()


def test_files_that_are_not_checkpoints_are_named_without_a_traceback(tmp_path, capsys):
    paths, _, _ = _pair(tmp_path)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pt is not a readable checkpoint"):
        average_weights([paths[0], str(text)], str(tmp_path / "x.pt"))
    assert main(["average", paths[0], str(tmp_path), "--output", str(tmp_path / "x.pt"), "-q"]) == 2
    assert "is not a readable checkpoint" in capsys.readouterr().err
    assert main(["average", *paths, "--shares", "nan,1", "--output", str(tmp_path / "x.pt"), "-q"]) == 2
    assert "finite" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
