"""Cross-modal knowledge distillation objectives (METHODS.md section 3).

Centre alignment after CGN (Dai & Liang, ICME 2020); similarity-preserving relational KD
(Tung & Mori, ICCV 2019); RKD distance/angle (Park et al., CVPR 2019); soft-label KD with
temperature (Hinton et al. 2015). All are pure functions of embeddings and labels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sb3dr_jax.models.common import l2_normalize
from sb3dr_jax.objectives.common import cosine_distance_matrix, cosine_similarity_matrix


def class_centres(t: jnp.ndarray, labels: jnp.ndarray, num_classes: int) -> jnp.ndarray:
    """c_y = normalise(mean of t over items of class y); classes without items get zeros.

    Args:
      t: [N, E] teacher embeddings.
      labels: [N] int class labels.
      num_classes: C.

    Returns:
      [C, E] unit-norm centres (zero rows for empty classes).
    """
    sums = jax.ops.segment_sum(l2_normalize(t), labels, num_segments=num_classes)
    return l2_normalize(sums)


def centre_alignment_loss(s, labels, centres, lam: float = 0.1) -> jnp.ndarray:
    """L_cen per sketch: d(s_i, c_{y_i}) - lam * mean_{j != y_i} d(s_i, c_j).

    Classes without a centre (zero rows from `class_centres`: no training shape) are left out
    of the push mean, since "far from nothing" carries no signal.

    Args:
      s: [b, E] student embeddings.
      labels: [b] classes.
      centres: [C, E] teacher class centres.
      lam: weight of the push term.

    Returns:
      [b] per-sketch losses.
    """
    d = cosine_distance_matrix(s, centres)  # [b, C]
    own = jax.nn.one_hot(labels, centres.shape[0], dtype=d.dtype)
    present = (jnp.sum(jnp.abs(centres), -1) > 0).astype(d.dtype)  # [C]
    others = (1 - own) * present[None]  # [b, C]
    pull = jnp.sum(d * own, 1)
    push = jnp.sum(d * others, 1) / jnp.maximum(others.sum(1), 1.0)
    return pull - lam * push


def relational_kd_loss(s: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    """Similarity-preserving KD: ||S - T||_F^2 / b^2 with row-normalised Gram matrices.

    Args:
      s: [b, E_s] student embeddings.
      t: [b, E_t] paired teacher targets.

    Returns:
      Scalar loss.
    """
    b = s.shape[0]
    gs = l2_normalize(s @ s.T)
    gt = l2_normalize(jax.lax.stop_gradient(t) @ jax.lax.stop_gradient(t).T)
    return jnp.sum((gs - gt) ** 2) / (b * b)


def _huber(x):
    a = jnp.abs(x)
    return jnp.where(a < 1.0, 0.5 * x * x, a - 0.5)


def rkd_loss(s, t, w_dist: float = 1.0, w_angle: float = 2.0) -> jnp.ndarray:
    """RKD: Huber loss between mean-normalised pairwise distances, plus triplet angles.

    Args:
      s: [b, E] student embeddings.
      t: [b, E] teacher targets.
      w_dist: weight of the distance term.
      w_angle: weight of the angle term.

    Returns:
      Scalar loss.
    """
    t = jax.lax.stop_gradient(t)
    b = s.shape[0]
    off = 1.0 - jnp.eye(b)

    def dist(x):
        d = jnp.sqrt(jnp.maximum(jnp.sum((x[:, None] - x[None]) ** 2, -1), 1e-12)) * off
        return d / jnp.maximum(d.sum() / jnp.maximum(off.sum(), 1.0), 1e-12)

    l_dist = jnp.sum(_huber(dist(s) - dist(t)) * off) / jnp.maximum(off.sum(), 1.0)

    def angles(x):
        e = x[None, :, :] - x[:, None, :]  # e[j, i] = x_i - x_j
        e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
        return jnp.einsum("jid,jkd->jik", e, e)  # cos of angle at j between i and k

    l_angle = jnp.mean(_huber(angles(s) - angles(t)))
    return w_dist * l_dist + w_angle * l_angle


def soft_label_kd_loss(s, t, centres, temperature: float = 0.1) -> jnp.ndarray:
    """T^2 KL(p_T || p_S), p = softmax(cos(., C) / T) over the class centres.

    Args:
      s: [b, E] student embeddings.
      t: [b, E] teacher targets (paired shapes or class centres).
      centres: [C, E].
      temperature: T.

    Returns:
      [b] per-sketch losses.
    """
    log_ps = jax.nn.log_softmax(cosine_similarity_matrix(s, centres) / temperature, -1)
    log_pt = jax.nn.log_softmax(
        jax.lax.stop_gradient(cosine_similarity_matrix(t, centres)) / temperature, -1
    )
    return temperature**2 * jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), -1)
