"""The security evaluation job: clean scores, published and adaptive attacks on a dataset, and its
summary table (docs/security.md). The attacks themselves live in `model.security`."""

from pipeline.security.attack import Attacker, AttackPlan, AttackSummary, CleanScorer, run_attacks
from pipeline.security.summary import plot_clean_vs_adv, render_markdown, summarize, write_summary

__all__ = ["AttackPlan", "AttackSummary", "Attacker", "CleanScorer", "plot_clean_vs_adv", "render_markdown",
           "run_attacks", "summarize", "write_summary"]
