"""Distances shared by the objectives."""

from __future__ import annotations

import jax.numpy as jnp

from sb3dr_jax.models.common import l2_normalize


def cosine_similarity_matrix(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """cos(a_i, b_j): [n, E] x [m, E] -> [n, m]."""
    return l2_normalize(a) @ l2_normalize(b).T


def cosine_distance_matrix(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """d(a_i, b_j) = 1 - cos(a_i, b_j): [n, E] x [m, E] -> [n, m]."""
    return 1.0 - cosine_similarity_matrix(a, b)


def cosine_distance(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Row-wise 1 - cos(a_i, b_i): [..., E] x [..., E] -> [...]."""
    return 1.0 - jnp.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def euclidean_distance_matrix(a: jnp.ndarray, b: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
    """||a_i - b_j||_2: [n, E] x [m, E] -> [n, m] (gradient-safe at 0)."""
    d2 = jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None] - 2 * a @ b.T
    return jnp.sqrt(jnp.maximum(d2, eps))
