"""`make demo` (jobs/demo.py) starts its results afresh when the demo set or the default model changes."""

from types import SimpleNamespace

import model.registry
from jobs.demo import forget_results_of_other_runs


def _results(out):
    for name in ("inter", "scores", "report"):
        (out / name).mkdir(exist_ok=True)
        (out / name / "part.parquet").write_bytes(b"rows")


def _kept(out):
    return all((out / name / "part.parquet").exists() for name in ("inter", "scores", "report"))


def test_demo_results_are_forgotten_when_the_demo_set_or_the_default_model_changes(tmp_path, monkeypatch):
    (tmp_path / "videos").mkdir()
    manifest = tmp_path / "videos" / "manifest.csv"
    manifest.write_text("video_id,uri,mos\na,a.mp4,4.0\n")
    model_a = SimpleNamespace(name="tiny-demo", sha256="a" * 64)
    monkeypatch.setattr(model.registry, "default_weights", lambda: model_a)

    _results(tmp_path)
    assert forget_results_of_other_runs(tmp_path) and not (tmp_path / "scores").exists()  # no stamp yet
    _results(tmp_path)
    assert not forget_results_of_other_runs(tmp_path) and _kept(tmp_path)  # same set, same model: kept

    # a newly installed demo model (another file): its scores must not be pooled with the old model's
    monkeypatch.setattr(model.registry, "default_weights", lambda: SimpleNamespace(name="tiny-demo", sha256="b" * 64))
    assert forget_results_of_other_runs(tmp_path) and not any(
        (tmp_path / name).exists() for name in ("inter", "scores", "report"))
    _results(tmp_path)
    assert not forget_results_of_other_runs(tmp_path) and _kept(tmp_path)

    # no demo model installed (the untrained preset) is a model of its own
    monkeypatch.setattr(model.registry, "default_weights", lambda: None)
    assert forget_results_of_other_runs(tmp_path)
    _results(tmp_path)

    # a rebuilt demo set (new clips or labels)
    manifest.write_text("video_id,uri,mos\na,a.mp4,3.5\n")
    assert forget_results_of_other_runs(tmp_path) and not (tmp_path / "scores").exists()
