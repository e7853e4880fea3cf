"""On-device augmentations, jittable, one random key per image.

Views and sketches are resampled through one affine map per image (random resized crop,
horizontal flip, small rotation; for sketches a milder jitter) with bilinear interpolation
(`jax.scipy.ndimage.map_coordinates`) and zero fill, so background stays 0 and values stay in
[0, 1]. The `strength` per shape (BCL, METHODS.md section 2) widens the crop-scale and rotation
ranges: strength 0 is the base (mild) augmentation, `max_strength` the strongest.

Every function takes either one key for the whole batch or one key per item (`[B]` keys, e.g.
from `train.step.sample_keys`). With per-item keys, item i's result depends on `keys[i]` alone,
so a global batch split over any number of devices is augmented identically.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _is_batch_of_keys(rng: jax.Array, n: int, what: str) -> bool:
    """True for [n] per-item keys, False for one key; anything else is an error."""
    typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
    single, batched = ((), (n,)) if typed else ((2,), (n, 2))
    if rng.shape == single:
        return False
    if rng.shape == batched:
        return True
    raise ValueError(
        f"{what}: rng must be one PRNG key or {n} keys (one per item), got shape {rng.shape}"
    )


def _item_keys(rng: jax.Array, n: int, what: str) -> jax.Array:
    """One key per item: `rng` split n ways when it is a single key, else `rng` itself ([n])."""
    return rng if _is_batch_of_keys(rng, n, what) else jax.random.split(rng, n)


def _affine_resample(img: jnp.ndarray, mat: jnp.ndarray, shift: jnp.ndarray) -> jnp.ndarray:
    """Samples img [H, W, C] at mat @ (y, x) + shift around the centre (bilinear, zero fill).

    `mat` maps output pixel offsets from the centre to source offsets, so a scale < 1 zooms in
    (a crop of that side fraction, resized back to H x W).
    """
    h, w = img.shape[:2]
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32) - cy, jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij"
    )  # [H, W] each
    src_y = mat[0, 0] * yy + mat[0, 1] * xx + cy + shift[0]
    src_x = mat[1, 0] * yy + mat[1, 1] * xx + cx + shift[1]

    def sample(ch):  # [H, W] -> [H, W]
        return jax.scipy.ndimage.map_coordinates(ch, [src_y, src_x], order=1, mode="constant")

    return jax.vmap(sample, in_axes=2, out_axes=2)(img)


def _random_affine(key, strength, *, min_scale, max_rot_deg, max_shift, flip: bool):
    """One random affine map (mat [2, 2], shift [2]); `strength` in [0, 1] widens the ranges.

    Crop side fraction ~ U(lo, 1) with lo = 1 - (1 - min_scale)(0.5 + 0.5 strength): strength 0
    keeps half the crop range (the base augmentation), strength 1 reaches `min_scale`. The
    rotation range is max_rot_deg * (0.5 + strength) degrees either way.
    """
    k1, k2, k3, k4 = jax.random.split(key, 4)
    lo = 1.0 - (1.0 - min_scale) * (0.5 + 0.5 * strength)
    scale = jax.random.uniform(k1, (), minval=lo, maxval=1.0)
    rot = jnp.deg2rad(max_rot_deg * (0.5 + strength)) * jax.random.uniform(
        k2, (), minval=-1, maxval=1
    )
    c, s = jnp.cos(rot), jnp.sin(rot)
    mat = scale * jnp.array([[c, -s], [s, c]])
    if flip:  # mirror the x axis with probability 1/2
        mat = mat @ jnp.diag(jnp.array([1.0, jnp.where(jax.random.bernoulli(k3), -1.0, 1.0)]))
    # The crop window moves inside the image: the smaller the crop, the further it may move.
    shift = jax.random.uniform(k4, (2,), minval=-1.0, maxval=1.0) * max_shift * (1.0 - scale + 0.05)
    return mat, shift


def _check_ranges(min_scale: float, max_strength: float, what: str) -> None:
    """Static range checks: the crop side fraction must stay positive at full strength."""
    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"{what}: min_scale={min_scale} must be in (0, 1]")
    if max_strength < 0.0 or (1.0 - min_scale) * (0.5 + 0.5 * max_strength) >= 1.0:
        raise ValueError(
            f"{what}: max_strength={max_strength} must be >= 0 and keep the crop scale "
            f"1 - (1 - min_scale)(0.5 + 0.5 max_strength) positive (min_scale={min_scale})"
        )


def augment_views(
    rng: jax.Array,
    views: jnp.ndarray,
    strength: jnp.ndarray,
    *,
    min_scale: float = 0.6,
    max_rot_deg: float = 10.0,
    max_strength: float = 1.0,
    parts: int = 1,
) -> jnp.ndarray:
    """Random resized crop + horizontal flip + small rotation, independently for every view.

    Args:
      rng: one PRNG key, or [B] keys (one per shape; its K views split it).
      views: [B, K, H, W, C] floats in [0, 1].
      strength: [B] per-shape augmentation strength; clipped to [0, max_strength].
      min_scale: smallest crop side fraction at strength 1.
      max_rot_deg: rotation range at strength 0.5 (scaled by 0.5 + strength).
      max_strength: upper clip of `strength`.
      parts: augment the shapes in this many independent calls (needs [B] keys; the same
        output). XLA:CPU runs each call's resampling gather on one thread, so two halves run
        side by side: teacher step 0.146-0.159 -> 0.137-0.140 s (benchmarks/README.md).

    Returns:
      [B, K, H, W, C] augmented views, same dtype, values in [0, 1].
    """
    if views.ndim != 5:
        raise ValueError(f"augment_views: views must be [B, K, H, W, C], got {views.shape}")
    _check_ranges(min_scale, max_strength, "augment_views")
    b, k, h = views.shape[:3]
    if strength.shape != (b,):
        raise ValueError(f"augment_views: strength must be [{b}], got {strength.shape}")
    per_shape_keys = _is_batch_of_keys(rng, b, "augment_views")
    if parts > 1 and b > 1:
        if not per_shape_keys:
            raise ValueError("augment_views: parts > 1 needs one key per shape ([B] keys)")
        kw = dict(min_scale=min_scale, max_rot_deg=max_rot_deg, max_strength=max_strength)
        cuts = np.linspace(0, b, min(parts, b) + 1).astype(int)  # [parts + 1] boundaries
        return jnp.concatenate(
            [
                augment_views(rng[i:j], views[i:j], strength[i:j], **kw)
                for i, j in zip(cuts, cuts[1:])
            ]
        )
    if per_shape_keys:
        keys = jax.vmap(lambda key: jax.random.split(key, k))(rng)  # [B, K]
    else:
        # One split for all B * K views: a batch of one with key r draws as per-item key r.
        keys = jax.random.split(rng, b * k)
        keys = keys.reshape((b, k) + keys.shape[1:])  # raw uint32 keys carry a trailing [2]
    st = jnp.clip(strength.astype(jnp.float32), 0.0, max_strength)  # [B]

    def one(key, img, s):  # img [H, W, C]
        mat, shift = _random_affine(
            key, s, min_scale=min_scale, max_rot_deg=max_rot_deg, max_shift=h / 2.0, flip=True
        )
        return _affine_resample(img.astype(jnp.float32), mat, shift)

    per_shape = jax.vmap(one, in_axes=(0, 0, None))  # over the K views of one shape
    return jax.vmap(per_shape)(keys, views, st).astype(views.dtype)


def augment_sketches(
    rng: jax.Array,
    images: jnp.ndarray,
    *,
    min_scale: float = 0.85,
    max_rot_deg: float = 8.0,
    flip: bool = True,
) -> jnp.ndarray:
    """Mild affine jitter for sketches: small crop/zoom, shift, rotation and optional flip.

    Mirrored sketches are still sketches of the same class, so flipping is on by default.

    Args:
      rng: one PRNG key, or [B] keys (one per sketch).
      images: [B, S, S, 1] floats in [0, 1].
      min_scale: smallest crop side fraction.
      max_rot_deg: rotation range at the fixed mid strength (scaled by 1.0).
      flip: random horizontal flips.

    Returns:
      [B, S, S, 1] augmented sketches, same dtype.
    """
    if images.ndim != 4:
        raise ValueError(f"augment_sketches: images must be [B, S, S, C], got {images.shape}")
    _check_ranges(min_scale, 0.5, "augment_sketches")
    keys = _item_keys(rng, images.shape[0], "augment_sketches")

    def one(key, img):  # img [S, S, 1]
        mat, shift = _random_affine(
            key,
            0.5,
            min_scale=min_scale,
            max_rot_deg=max_rot_deg,
            max_shift=images.shape[1] / 4.0,
            flip=flip,
        )
        return _affine_resample(img.astype(jnp.float32), mat, shift)

    return jax.vmap(one)(keys, images).astype(images.dtype)


def bcl_strength(rng: jax.Array, weights: jnp.ndarray, s: float = 1.0) -> jnp.ndarray:
    """BCL: shape i is augmented strongly with probability w_i, magnitude s * w_i * U(0, 1).

    Args:
      rng: one PRNG key, or [B] keys (one per shape).
      weights: [B] BCL weights in [0, 1] (`objectives.longtail.bcl_weights`).
      s: the maximal extra strength.

    Returns:
      [B] strengths in [0, s] (0 for shapes not drawn for strong augmentation).
    """
    if weights.ndim != 1:
        raise ValueError(f"bcl_strength: weights must be [B], got {weights.shape}")
    w = weights.astype(jnp.float32)

    def draw(key, wi):  # wi: [] or [B]; the same draws for a batch of one and one item
        k1, k2 = jax.random.split(key)
        strong = jax.random.bernoulli(k1, jnp.clip(wi, 0.0, 1.0))
        return jnp.where(strong, s * wi * jax.random.uniform(k2, wi.shape), 0.0)

    if _is_batch_of_keys(rng, w.shape[0], "bcl_strength"):
        return jax.vmap(draw)(rng, w)
    return draw(rng, w)
