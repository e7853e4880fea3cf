"""On-device augmentations, jittable, one random key per image.

Views and sketches are resampled through one affine map per image (random resized crop,
horizontal flip, small rotation; for sketches a milder jitter) with bilinear interpolation and
zero fill, so background stays 0. The `strength` per shape (BCL, METHODS.md section 2) widens
the crop-scale and rotation ranges: strength 0 is the base augmentation, 1 the strongest.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _affine_resample(img: jnp.ndarray, mat: jnp.ndarray, shift: jnp.ndarray) -> jnp.ndarray:
    """Samples img [H, W, C] at mat @ (y, x) + shift around the centre (bilinear, zero fill)."""
    h, w = img.shape[:2]
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32) - cy, jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij"
    )
    src_y = mat[0, 0] * yy + mat[0, 1] * xx + cy + shift[0]
    src_x = mat[1, 0] * yy + mat[1, 1] * xx + cx + shift[1]
    sample = lambda ch: jax.scipy.ndimage.map_coordinates(
        ch, [src_y, src_x], order=1, mode="constant"
    )
    return jax.vmap(sample, in_axes=2, out_axes=2)(img)


def _random_affine(key, strength, *, min_scale, max_rot_deg, max_shift, flip: bool):
    """One random affine map; `strength` in [0, 1] widens the ranges."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    lo = 1.0 - (1.0 - min_scale) * (0.5 + 0.5 * strength)  # crop side fraction lower bound
    scale = jax.random.uniform(k1, (), minval=lo, maxval=1.0)
    rot = jnp.deg2rad(max_rot_deg * (0.5 + strength)) * jax.random.uniform(
        k2, (), minval=-1, maxval=1
    )
    c, s = jnp.cos(rot), jnp.sin(rot)
    mat = scale * jnp.array([[c, -s], [s, c]])
    if flip:
        mat = mat @ jnp.diag(jnp.array([1.0, jnp.where(jax.random.bernoulli(k3), -1.0, 1.0)]))
    shift = jax.random.uniform(k4, (2,), minval=-1.0, maxval=1.0) * max_shift * (1.0 - scale + 0.05)
    return mat, shift


def augment_views(
    rng,
    views: jnp.ndarray,
    strength: jnp.ndarray,
    *,
    min_scale: float = 0.6,
    max_rot_deg: float = 10.0,
) -> jnp.ndarray:
    """Random resized crop + flip + small rotation for every view.

    Args:
      rng: a PRNG key.
      views: [B, K, H, W, C] floats in [0, 1].
      strength: [B] per-shape augmentation strength in [0, 1].
      min_scale: smallest crop side fraction at full strength.
      max_rot_deg: rotation range at strength 0.5 (scaled by 0.5 + strength).

    Returns:
      [B, K, H, W, C] augmented views.
    """
    b, k, h = views.shape[:3]
    keys = jax.random.split(rng, b * k).reshape(b, k)

    def one(key, img, st):
        mat, shift = _random_affine(
            key, st, min_scale=min_scale, max_rot_deg=max_rot_deg, max_shift=h / 2.0, flip=True
        )
        return _affine_resample(img, mat, shift)

    per_shape = jax.vmap(one, in_axes=(0, 0, None))
    return jax.vmap(per_shape)(keys, views, strength.astype(jnp.float32))


def augment_sketches(
    rng, images: jnp.ndarray, *, min_scale: float = 0.85, max_rot_deg: float = 8.0
) -> jnp.ndarray:
    """Mild affine jitter for sketches (no flip-free assumption: sketches flip too).

    Args:
      rng: a PRNG key.
      images: [B, S, S, 1] floats in [0, 1].
      min_scale: smallest crop side fraction.
      max_rot_deg: rotation range.

    Returns:
      [B, S, S, 1] augmented sketches.
    """
    keys = jax.random.split(rng, images.shape[0])

    def one(key, img):
        mat, shift = _random_affine(
            key,
            0.5,
            min_scale=min_scale,
            max_rot_deg=max_rot_deg,
            max_shift=images.shape[1] / 4.0,
            flip=True,
        )
        return _affine_resample(img, mat, shift)

    return jax.vmap(one)(keys, images)


def bcl_strength(rng, weights: jnp.ndarray, s: float = 1.0) -> jnp.ndarray:
    """BCL: shape i is augmented strongly with probability w_i, magnitude s * w_i * U(0, 1).

    Args:
      rng: a PRNG key.
      weights: [B] BCL weights in [0, 1].
      s: the maximal extra strength.

    Returns:
      [B] strengths in [0, s].
    """
    k1, k2 = jax.random.split(rng)
    strong = jax.random.bernoulli(k1, weights)
    return jnp.where(strong, s * weights * jax.random.uniform(k2, weights.shape), 0.0)
