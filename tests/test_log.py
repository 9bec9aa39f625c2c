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


def test_cli_quiet_and_verbose_exclude_each_other(capsys):
    from jobs.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["report", "--scores", "s", "--output", "o", "--quiet", "--verbose"])
    args = build_parser().parse_args(["report", "--scores", "s", "--output", "o", "-q"])
    assert args.quiet and not args.verbose
