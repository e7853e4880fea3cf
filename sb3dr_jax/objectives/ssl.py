"""Positive-only self-supervised objectives for the multi-view teacher (METHODS.md section 1).

BYOL: Grill et al., "Bootstrap your own latent", NeurIPS 2020. SimSiam: Chen & He, "Exploring
simple Siamese representation learning", CVPR 2021. Views of one shape are the positives; no
negatives are used anywhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sb3dr_jax.objectives.common import cosine_distance

sg = jax.lax.stop_gradient


def byol_loss(pred_a, target_b, pred_b, target_a) -> jnp.ndarray:
    """Symmetrised BYOL loss per shape.

    L = 2 - 2 cos(q(z_A), sg(z'_B)) + 2 - 2 cos(q(z_B), sg(z'_A)).

    Args:
      pred_a: online predictions of view subset A, [B, P].
      target_b: target projections of subset B (EMA network), [B, P].
      pred_b: online predictions of subset B, [B, P].
      target_a: target projections of subset A, [B, P].

    Returns:
      [B] per-shape losses (the BCL memory needs them per shape).
    """
    return 2 * cosine_distance(pred_a, sg(target_b)) + 2 * cosine_distance(pred_b, sg(target_a))


def simsiam_loss(pred_a, target_b, pred_b, target_a) -> jnp.ndarray:
    """SimSiam loss per shape: the BYOL formula with the *online* projections as targets.

    The caller passes the online network's own projections as `target_*`; the stop-gradient
    here is what prevents collapse (no EMA network exists).
    """
    return byol_loss(pred_a, target_b, pred_b, target_a)


def per_view_loss(pred: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """Per-view positives: mean over ordered pairs a != b of 2 - 2 cos(q(z_a), sg(z'_b)).

    Args:
      pred: online predictions of single views, [B, K, P].
      target: target projections of the same views, [B, K, P].

    Returns:
      [B] per-shape losses.
    """
    k = pred.shape[1]
    cos = jnp.einsum("bip,bjp->bij", _unit(pred), _unit(sg(target)))  # [B, K, K]
    off = 1.0 - jnp.eye(k)
    return jnp.sum((2 - 2 * cos) * off, axis=(1, 2)) / (k * (k - 1))


def _unit(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def ema_tau(step, total_steps: int, tau_base: float) -> jnp.ndarray:
    """BYOL's cosine schedule: tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2."""
    k = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps)
    return 1.0 - (1.0 - tau_base) * (jnp.cos(jnp.pi * k / max(total_steps, 1)) + 1.0) / 2.0


def ema_update(target, online, tau):
    """xi <- tau * xi + (1 - tau) * theta, leaf by leaf."""
    return jax.tree_util.tree_map(lambda x, y: tau * x + (1.0 - tau) * y, target, online)
