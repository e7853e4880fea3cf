"""Optimisers from config: AdamW or LARS, with linear warmup and cosine decay."""

from __future__ import annotations

import jax
import optax


def _decay_mask(params):
    """Weight decay on kernels only (not biases or normalisation scales)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    """Builds the optimiser.

    Args:
      cfg: ConfigDict with `name` ("adamw" | "lars"), `lr`, `weight_decay`, `warmup_steps`,
        optional `grad_clip` (0 = off), `b1`, `b2`.
      total_steps: length of the cosine schedule.

    Returns:
      An optax transformation.
    """
    # optax needs decay_steps > warmup_steps >= 1, even for a 1-step run.
    warmup = max(min(int(cfg.warmup_steps), total_steps - 1), 1)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.lr * 1e-3,
    )
    if cfg.name == "adamw":
        opt = optax.adamw(
            schedule,
            b1=cfg.get("b1", 0.9),
            b2=cfg.get("b2", 0.999),
            weight_decay=cfg.weight_decay,
            mask=_decay_mask,
        )
    elif cfg.name == "lars":
        opt = optax.lars(
            schedule,
            weight_decay=cfg.weight_decay,
            weight_decay_mask=_decay_mask,
            trust_ratio_mask=_decay_mask,
            momentum=0.9,
        )
    else:
        raise ValueError(f"optim.name: unknown {cfg.name!r} (adamw | lars)")
    if cfg.get("grad_clip", 0.0):
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    return opt
