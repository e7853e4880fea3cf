"""Class-frequency groups for long-tailed evaluation: head / medium / tail."""

from __future__ import annotations

import numpy as np

GROUPS = ("head", "medium", "tail")


def class_groups(shape_counts, head_min: int = 20, tail_max: int = 5) -> np.ndarray:
    """Assigns every class to a group by its number of target models.

    Args:
      shape_counts: [C] target models per class.
      head_min: classes with at least this many models are head.
      tail_max: classes with at most this many models are tail.

    Returns:
      [C] array of "head" | "medium" | "tail".
    """
    if tail_max >= head_min:
        raise ValueError(f"group thresholds: tail_max ({tail_max}) must be < head_min ({head_min})")
    n = np.asarray(shape_counts)
    return np.where(n >= head_min, "head", np.where(n <= tail_max, "tail", "medium"))
