"""The enhanced triplet loss (METHODS.md section 3) with batch-hard mining over the global batch.

Anchors are this device's slice of the global sketch batch; candidates are the whole global
batch, gathered by the caller (`jax.lax.all_gather(x, "data", tiled=True)`), so mining sees the
same items on 1 device or 8 and the mean over devices equals the single-device mean.
"""

from __future__ import annotations

import jax.numpy as jnp

from sb3dr_jax.objectives.common import cosine_distance, cosine_distance_matrix

BIG = 1e4


def batch_hard(d: jnp.ndarray, pos: jnp.ndarray, neg: jnp.ndarray, margin: float) -> jnp.ndarray:
    """max(0, margin + max_pos d - min_neg d) per row; 0 for rows lacking a positive or negative.

    Args:
      d: [b, G] distances.
      pos: [b, G] bool, positives.
      neg: [b, G] bool, negatives.
      margin: the margin.

    Returns:
      [b] losses.
    """
    hardest_pos = jnp.max(jnp.where(pos, d, -BIG), 1)
    hardest_neg = jnp.min(jnp.where(neg, d, BIG), 1)
    valid = pos.any(1) & neg.any(1)
    return jnp.where(valid, jnp.maximum(0.0, margin + hardest_pos - hardest_neg), 0.0)


def enhanced_triplet_loss(
    anchors,
    anchor_labels,
    targets,
    target_labels,
    sketches,
    sketch_labels,
    centres,
    *,
    m_x: float = 0.2,
    m_s: float = 0.2,
    mu: float = 0.5,
    nu: float = 0.1,
    anchor_offset=0,
) -> jnp.ndarray:
    """L_et per anchor: cross-modal batch-hard + mu intra-sketch batch-hard + nu centre term.

    Args:
      anchors: [b, E] student sketch embeddings (this device's slice).
      anchor_labels: [b].
      targets: [G, E] teacher shape targets of the global batch.
      target_labels: [G].
      sketches: [G, E] student embeddings of the global batch (contains the anchors).
      sketch_labels: [G].
      centres: [C, E] teacher class centres.
      m_x: cross-modal margin.
      m_s: intra-sketch margin.
      mu: weight of the intra-sketch term (0: plain cross-modal triplet).
      nu: weight of the centre term.
      anchor_offset: position of `anchors` in the global batch (an anchor is not its own
        positive).

    Returns:
      [b] per-anchor losses.
    """
    same_t = anchor_labels[:, None] == target_labels[None]
    loss = batch_hard(cosine_distance_matrix(anchors, targets), same_t, ~same_t, m_x)
    if mu:
        b, g = anchors.shape[0], sketches.shape[0]
        self_mask = (jnp.arange(b)[:, None] + anchor_offset) == jnp.arange(g)[None]
        same_s = anchor_labels[:, None] == sketch_labels[None]
        d_s = cosine_distance_matrix(anchors, sketches)
        loss = loss + mu * batch_hard(d_s, same_s & ~self_mask, ~same_s, m_s)
    if nu:
        loss = loss + nu * cosine_distance(anchors, jnp.asarray(centres)[anchor_labels])
    return loss
