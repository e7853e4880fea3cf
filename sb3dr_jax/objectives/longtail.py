"""Self-supervised long-tail optimisation (METHODS.md section 2).

BCL: Zhou et al., "Contrastive learning with boosted memorization", ICML 2022.
SDCLR: Jiang et al., "Self-damaging contrastive learning", ICML 2021.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bcl_accumulate(loss_sum, loss_count, index, loss):
    """Adds this step's per-shape losses to the epoch accumulators.

    Args:
      loss_sum: [N] summed losses this epoch.
      loss_count: [N] how many times each shape was seen this epoch.
      index: [B] shape indices of the batch.
      loss: [B] per-shape SSL losses.

    Returns:
      (loss_sum, loss_count) updated.
    """
    return loss_sum.at[index].add(loss), loss_count.at[index].add(1.0)


def bcl_update(memory, loss_sum, loss_count, beta: float = 0.97):
    """Epoch-end memory update m_i <- beta m_i + (1 - beta) l_i for shapes seen this epoch.

    Args:
      memory: [N] loss memory.
      loss_sum: [N] summed losses of the epoch.
      loss_count: [N] counts of the epoch.
      beta: memory momentum.

    Returns:
      [N] the new memory (unseen shapes keep theirs).
    """
    seen = loss_count > 0
    mean = loss_sum / jnp.maximum(loss_count, 1.0)
    return jnp.where(seen, beta * memory + (1.0 - beta) * mean, memory)


def bcl_weights(memory):
    """w_i = 0.5 + 0.5 (m_i - mean m) / max |m - mean m|, in [0, 1] (0.5 when all equal)."""
    c = memory - memory.mean()
    scale = jnp.max(jnp.abs(c))
    return 0.5 + 0.5 * jnp.where(scale > 0, c / jnp.where(scale > 0, scale, 1.0), 0.0)


def _is_kernel(path) -> bool:
    return getattr(path[-1], "key", None) == "kernel"


def sdclr_masks(params, prune_ratio: float = 0.7):
    """Magnitude-pruning masks: per kernel, the `prune_ratio` smallest |w| are masked (0).

    Biases and normalisation parameters are never pruned (mask 1).

    Args:
      params: a params tree.
      prune_ratio: fraction p of each kernel's weights to mask.

    Returns:
      A tree like `params` of float32 {0, 1} masks.
    """

    def mask(path, w):
        if not _is_kernel(path):
            return jnp.ones_like(w, jnp.float32)
        a = jnp.abs(w).ravel()
        k = jnp.clip(jnp.floor(prune_ratio * a.size).astype(jnp.int32), 0, a.size - 1)
        threshold = jnp.sort(a)[k]
        return (jnp.abs(w) >= threshold).astype(jnp.float32)

    return jax.tree_util.tree_map_with_path(mask, params)


def apply_masks(params, masks):
    """The pruned network: params * masks."""
    return jax.tree_util.tree_map(lambda p, m: p * m.astype(p.dtype), params, masks)
