"""The dataset report of a score table: numbers (`summary`), figures (`plots`), report.md/.json (`build`)."""

from pipeline.report.build import build_report, render_markdown
from pipeline.report.plots import plot_score_hist, plot_score_vs_mos
from pipeline.report.summary import load_scores, summarize

__all__ = ["build_report", "load_scores", "plot_score_hist", "plot_score_vs_mos", "render_markdown", "summarize"]
