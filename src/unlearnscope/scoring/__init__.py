"""Difficulty scorers behind one interface, and the sharded, resumable scoring runner."""

import unlearnscope.scoring.controls  # registers the trivial controls
import unlearnscope.scoring.mrd  # noqa: F401 (registers mrd, mrd_grad, mrd_hutchinson)
from unlearnscope.scoring import baselines, cud  # noqa: F401 (cud: registers cud, cud_paper)
from unlearnscope.scoring.base import (
    SCORERS,
    LogitScorer,
    Scorer,
    get_scorer,
    register_scorer,
    scorer_class,
)
from unlearnscope.scoring.runner import read_scorer_configs, score_samples

BASELINES = baselines.BASELINES

__all__ = [
    "BASELINES",
    "SCORERS",
    "LogitScorer",
    "Scorer",
    "get_scorer",
    "read_scorer_configs",
    "register_scorer",
    "score_samples",
    "scorer_class",
]
