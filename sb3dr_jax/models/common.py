"""Small pieces shared by the models."""

from __future__ import annotations

import jax.numpy as jnp


def normalize_uint8(x: jnp.ndarray, dtype=jnp.float32) -> jnp.ndarray:
    """uint8 images (host layout) to floats in [0, 1] on device; floats pass through.

    Args:
      x: images, uint8 or already float.
      dtype: the compute dtype.

    Returns:
      x as `dtype`, scaled to [0, 1] when it was uint8.
    """
    if x.dtype == jnp.uint8:
        return x.astype(dtype) * (1.0 / 255.0)
    return x.astype(dtype)


def l2_normalize(x: jnp.ndarray, axis: int = -1, eps: float = 1e-8) -> jnp.ndarray:
    """Scales vectors to unit L2 norm (zero vectors stay zero)."""
    return x * jnp.reciprocal(jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps))
