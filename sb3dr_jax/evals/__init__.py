"""Evaluation: the SHREC protocol, long-tail groups, the retrieval index, reports."""

from sb3dr_jax.evals.groups import GROUPS, class_groups
from sb3dr_jax.evals.metrics import (
    evaluate_retrieval,
    knn_accuracy,
    metrics_from_ranking,
    rank_gallery,
)

__all__ = [
    "GROUPS",
    "class_groups",
    "evaluate_retrieval",
    "knn_accuracy",
    "metrics_from_ranking",
    "rank_gallery",
]
