"""Objective registry: config names -> pure jnp loss functions of embeddings and labels."""

from __future__ import annotations

import functools
from collections.abc import Callable

from sb3dr_jax.objectives import baselines, kd, longtail, ssl, triplet

REGISTRY: dict[str, Callable] = {
    # Teacher (METHODS.md section 1).
    "byol": ssl.byol_loss,
    "simsiam": ssl.simsiam_loss,
    "per_view": ssl.per_view_loss,
    # Student (section 3).
    "centre_alignment": kd.centre_alignment_loss,
    "relational": kd.relational_kd_loss,
    "rkd": kd.rkd_loss,
    "soft_label": kd.soft_label_kd_loss,
    "enhanced_triplet": triplet.enhanced_triplet_loss,
    # The plain cross-modal batch-hard triplet: no intra-sketch or centre term.
    "cross_modal_triplet": functools.partial(triplet.enhanced_triplet_loss, mu=0.0, nu=0.0),
    # Baselines (section 4).
    "siamese": baselines.siamese_loss,
    "dcml": baselines.dcml_loss,
    "lwbr": baselines.lwbr_loss,
    "dca": baselines.dca_loss,
    "dca_iaml": baselines.iaml_loss,
    "dca_cmd": baselines.class_mean_discrepancy,
    "tcl": baselines.triplet_centre_loss,
    "quadruplet": baselines.quadruplet_loss,
    "soft_target_kl": baselines.soft_target_kl,
    "cross_modal_self_distillation": baselines.cross_modal_self_distillation,
}


def get_objective(name: str) -> Callable:
    """Returns the loss function registered under `name`.

    Args:
      name: a config name (a key of `REGISTRY`).

    Returns:
      The pure loss function.

    Raises:
      ValueError: unknown name (the message lists the known ones).
    """
    if name not in REGISTRY:
        raise ValueError(f"objective: unknown {name!r}; choose from {sorted(REGISTRY)}")
    return REGISTRY[name]


__all__ = ["REGISTRY", "baselines", "get_objective", "kd", "longtail", "ssl", "triplet"]
