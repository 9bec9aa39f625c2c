"""Library code logs through the `securevqa` loggers; the command line sets level and format once
(pipeline/log.py, issue 14 point 5)."""

from __future__ import annotations

import logging

import pytest

from pipeline import log as plog


@pytest.fixture(autouse=True)
def _restore():
    root = logging.getLogger(plog.ROOT)
    handlers, level = list(root.handlers), root.level
    ray_levels = {n: logging.getLogger(n).level for n in plog.RAY_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for n, lv in ray_levels.items():
        logging.getLogger(n).setLevel(lv)


def test_configure_sets_level_and_writes_plain_lines_to_the_current_stream(capsys):
    plog.configure(logging.INFO)
    logging.getLogger("securevqa.stages").info("score: %d videos", 3)
    logging.getLogger("securevqa.stages").debug("hidden")
    assert capsys.readouterr().err == "score: 3 videos\n"
    plog.configure(logging.WARNING)  # --quiet; a second call replaces the handler, no duplicate lines
    logging.getLogger("securevqa.training").info("progress")
    logging.getLogger("securevqa.training").warning("left out")
    assert capsys.readouterr().err == "left out\n"
    assert sum(isinstance(h, logging.StreamHandler) for h in logging.getLogger(plog.ROOT).handlers) == 1


def test_ray_loggers_are_kept_to_warnings_unless_verbose():
    plog.configure(logging.INFO)
    assert all(logging.getLogger(n).level == logging.WARNING for n in plog.RAY_LOGGERS)
    plog.configure(logging.DEBUG, quiet_ray=False)
    assert logging.getLogger("ray.data").level == logging.WARNING  # left as it was: verbose does not touch it


def test_worker_takes_the_drivers_level_once(capsys):
    logging.getLogger(plog.ROOT).handlers[:] = [h for h in logging.getLogger(plog.ROOT).handlers
                                                if not isinstance(h, logging.StreamHandler)]
    plog.configure_worker(logging.WARNING)
    assert plog.driver_level() == logging.WARNING
    plog.configure_worker(logging.DEBUG)  # a handler is there already (an in-process call): unchanged
    assert plog.driver_level() == logging.WARNING
    logging.getLogger("securevqa.security").warning("attack: v1 left out")
    assert capsys.readouterr().out == "attack: v1 left out\n"  # workers write to stdout, which Ray forwards


def test_durations_in_progress_lines():
    assert [plog.duration(s) for s in (0, 59.6, 725, 3 * 3600 + 7 * 60 + 20, float("inf"))] == [
        "0m00s", "1m00s", "12m05s", "3h07m", "unknown time"]


def test_the_demo_model_job_shows_the_training_set_builds_progress(tmp_path, monkeypatch, capsys):
    from jobs import demo_model
    from pipeline.demo import build

    def build_training_set(*a, **k):  # the build's progress line, then a stop before anything is trained
        logging.getLogger("securevqa.demo").info("[1/170] dog (video, train): 64 frames; about 35m10s left")
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "build_training_set", build_training_set)
    logging.getLogger(plog.ROOT).handlers.clear()  # as in a fresh process: nothing configured yet
    with pytest.raises(KeyboardInterrupt):
        demo_model.main(["--out", str(tmp_path / "out"), "--no-extra-content"])
    assert "[1/170] dog (video, train): 64 frames; about 35m10s left\n" in capsys.readouterr().err


def test_cli_quiet_and_verbose_exclude_each_other(capsys):
    from jobs.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["report", "--scores", "s", "--output", "o", "--quiet", "--verbose"])
    args = build_parser().parse_args(["report", "--scores", "s", "--output", "o", "-q"])
    assert args.quiet and not args.verbose


def test_a_ray_train_worker_prints_each_line_once(capsys):
    """Ray Train configures the root logger of its workers (a console handler and its application log file):
    there, `securevqa` lines only take the driver's level and reach the console once, through the root."""
    class RayConsole(logging.StreamHandler):  # stands for ray.train's PlainRayHandler
        __module__ = "ray.train.v2._internal.logging.logging"

    ours = logging.getLogger(plog.ROOT)
    ours.handlers[:] = [h for h in ours.handlers if not isinstance(h, logging.StreamHandler)]
    console = RayConsole(stream=__import__("sys").stdout)
    logging.getLogger().addHandler(console)
    try:
        plog.configure_worker(logging.INFO)
        logging.getLogger("securevqa.training").info("train: epoch 1/16 step 10/146")
        logging.getLogger("securevqa.training").debug("hidden")
        assert capsys.readouterr().out == "train: epoch 1/16 step 10/146\n"
        assert not any(isinstance(h, logging.StreamHandler) for h in ours.handlers)
    finally:
        logging.getLogger().removeHandler(console)
