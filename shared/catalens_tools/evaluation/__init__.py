"""Retrieval-quality evaluation: metrics over score matrices and dataset protocols over embedding functions.

Pure functions (no model, no AWS): a caller passes ``embed_fn(paths) -> float32[n, d]`` and gets metrics back,
so any embedding configuration can be compared under the same protocol.
"""

from catalens_tools.evaluation.grocery import EmbedFn, evaluate_grocery, load_grocery
from catalens_tools.evaluation.metrics import (
    average_precision,
    cosine_scores,
    mean_average_precision,
    recall_at_k,
    topk_accuracy,
)

__all__ = [
    "EmbedFn",
    "average_precision",
    "cosine_scores",
    "evaluate_grocery",
    "load_grocery",
    "mean_average_precision",
    "recall_at_k",
    "topk_accuracy",
]
