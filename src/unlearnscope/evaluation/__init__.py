"""TOFU evaluation metrics, membership-inference attacks and greedy-generation ROUGE."""

from unlearnscope.evaluation.mia import (
    ATTACKS,
    gradnorm_scores,
    mia_auc,
    min_k_plus_plus_scores,
    min_k_scores,
    privleak,
)
from unlearnscope.evaluation.tofu import (
    Truncation,
    answer_losses,
    answer_statistics,
    closer_to_1_better,
    evaluate_tofu,
    forget_quality,
    harmonic_mean,
    metrics_report,
    normalized_probability,
    option_losses,
    retain_reference,
    sample_truth_ratios,
    true_better,
    truth_ratio,
)
from unlearnscope.models.answer_stats import (
    exact_memorization,
    extraction_strength,
    token_stats,
    zlib_ratio,
)
from unlearnscope.models.generation import greedy_answers, left_pad, rouge_l_recall

__all__ = [
    "ATTACKS", "Truncation", "answer_losses", "answer_statistics", "closer_to_1_better",
    "evaluate_tofu", "exact_memorization", "extraction_strength", "forget_quality",
    "gradnorm_scores", "greedy_answers", "harmonic_mean", "left_pad", "metrics_report", "mia_auc",
    "min_k_plus_plus_scores", "min_k_scores", "normalized_probability", "option_losses",
    "privleak", "retain_reference", "rouge_l_recall", "sample_truth_ratios", "token_stats",
    "true_better",
    "truth_ratio", "zlib_ratio",
]
