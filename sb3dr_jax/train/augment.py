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

from sb3dr_jax.models.common import in_chunks

RESAMPLE_IMPLS = ("map_coordinates", "rows")


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


def _source_coords(h: int, w: int, mat: jnp.ndarray, shift: jnp.ndarray):
    """Source (y, x) [H, W] each of every output pixel: mat @ (offset from the centre) + shift."""
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32) - cy, jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij"
    )  # [H, W] each
    src_y = mat[0, 0] * yy + mat[0, 1] * xx + cy + shift[0]
    src_x = mat[1, 0] * yy + mat[1, 1] * xx + cx + shift[1]
    return src_y, src_x


def _affine_resample(
    img: jnp.ndarray, mat: jnp.ndarray, shift: jnp.ndarray, disp: jnp.ndarray | None = None
) -> jnp.ndarray:
    """Samples img [H, W, C] at mat @ (y, x) + shift (+ disp) around the centre (bilinear, 0 fill).

    `mat` maps output pixel offsets from the centre to source offsets, so a scale < 1 zooms in
    (a crop of that side fraction, resized back to H x W). `disp` [2, H, W] adds a per-pixel
    source offset (an elastic deformation), in pixels.
    """
    h, w = img.shape[:2]
    src_y, src_x = _source_coords(h, w, mat, shift)
    if disp is not None:
        src_y, src_x = src_y + disp[0], src_x + disp[1]

    def sample(ch):  # [H, W] -> [H, W]
        return jax.scipy.ndimage.map_coordinates(ch, [src_y, src_x], order=1, mode="constant")

    return jax.vmap(sample, in_axes=2, out_axes=2)(img)


def _affine_resample_rows(img: jnp.ndarray, mat: jnp.ndarray, shift: jnp.ndarray,
                          scale: float = 1.0) -> jnp.ndarray:  # fmt: skip
    """`_affine_resample` (the same bilinear weights and zero fill) with one gather of whole
    pixels [C] per corner instead of one `map_coordinates` gather per channel, in float32.

    Why: on a GPU each per-channel gather is its own pass over scattered addresses; gathering
    the C channels of a pixel together reads them in one go. `img` may be uint8 (`scale` =
    1/255 then normalises after the interpolation, so the uint8 views are read as bytes).

    Returns:
      [H, W, C] float32.
    """
    h, w = img.shape[:2]
    src_y, src_x = _source_coords(h, w, mat, shift)
    y0, x0 = jnp.floor(src_y), jnp.floor(src_x)
    wy, wx = src_y - y0, src_x - x0  # weights of the upper corners, as map_coordinates has them
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    out = jnp.zeros((h, w, img.shape[2]), jnp.float32)
    for dy, fy in ((0, 1 - wy), (1, wy)):
        for dx, fx in ((0, 1 - wx), (1, wx)):
            yi, xi = y0 + dy, x0 + dx
            valid = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
            v = img[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)].astype(jnp.float32)
            out = out + jnp.where(valid, fy * fx, 0.0)[..., None] * v  # [H, W, C]
    return out * scale if scale != 1.0 else out


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


def _resample_each(affine, keys: jax.Array, images: jnp.ndarray, *args, chunk: int = 0,
                   impl: str = "map_coordinates", dtype=None):  # fmt: skip
    """Resamples every image i through `affine(keys[i], *(a[i] for a in args))`.

    Args:
      affine: (key, *per-image args) -> (mat [2, 2], shift [2]).
      keys: [N] keys.
      images: [N, H, W, C].
      *args: [N] per-image arrays passed to `affine`.
      chunk: > 0: `chunk` images per call. A model that runs its backbone on chunks of the
        same size then reads each call's output straight (XLA drops the slice of the
        concatenation), so on CPU each chunk's resampling gather runs beside the other chunks'
        convolutions instead of all of them in one single-threaded loop before the first.
      impl: "map_coordinates" (one gather per channel; the CPU configs') or "rows" (one gather
        of whole pixels per corner, `_affine_resample_rows`; uint8 images are normalised to
        [0, 1] after the interpolation).
      dtype: the output dtype (None: the images', float32 for uint8 images).

    Returns:
      [N, H, W, C] resampled images.
    """
    if impl not in RESAMPLE_IMPLS:
        raise ValueError(f"augment.impl: unknown {impl!r}; choose from {RESAMPLE_IMPLS}")
    if images.dtype == jnp.uint8 and impl == "map_coordinates":
        images = images.astype(jnp.float32) * (1.0 / 255.0)
    dtype = dtype or (jnp.float32 if images.dtype == jnp.uint8 else images.dtype)
    if 0 < chunk < images.shape[0]:
        each = lambda k, im, *a: _resample_each(affine, k, im, *a, impl=impl, dtype=dtype)
        return in_chunks(each, chunk, keys, images, *args)
    scale = 1.0 / 255.0 if images.dtype == jnp.uint8 else 1.0

    def one(key, img, *a):  # img [H, W, C]
        mat, shift = affine(key, *a)
        if impl == "rows":
            return _affine_resample_rows(img, mat, shift, scale).astype(dtype)
        return _affine_resample(img.astype(jnp.float32), mat, shift)

    return jax.vmap(one)(keys, images, *args).astype(dtype)


def view_keys(rng: jax.Array, b: int, k: int) -> jax.Array:
    """The per-view keys `augment_views` draws with: [B, K] (raw uint32 keys: [B, K, 2]).

    Args:
      rng: one PRNG key (split B * K ways) or [B] keys (one per shape, each split K ways).
      b: shapes.
      k: views per shape.

    Returns:
      [B, K] keys; view j of shape i is augmented with key [i, j].
    """
    if _is_batch_of_keys(rng, b, "augment_views"):
        return jax.vmap(lambda key: jax.random.split(key, k))(rng)  # [B, K]
    # One split for all B * K views: a batch of one with key r draws as per-item key r.
    keys = jax.random.split(rng, b * k)
    return keys.reshape((b, k) + keys.shape[1:])  # raw uint32 keys carry a trailing [2]


def augment_images(
    keys: jax.Array,
    images: jnp.ndarray,
    strength: jnp.ndarray,
    *,
    min_scale: float = 0.6,
    max_rot_deg: float = 10.0,
    max_strength: float = 1.0,
    chunk: int = 0,
    impl: str = "map_coordinates",
    dtype=None,
) -> jnp.ndarray:
    """`augment_views`' resized crop + flip + rotation, one key and strength per image.

    Args:
      keys: [N] keys (from `view_keys`, flattened or rearranged with the images).
      images: [N, H, W, C] floats in [0, 1], or uint8 (normalised to [0, 1] here).
      strength: [N] augmentation strength; clipped to [0, max_strength].
      min_scale, max_rot_deg, max_strength: as in `augment_views`.
      chunk: > 0: augment `chunk` images per call, for a backbone that runs on chunks of the
        same size (`_resample_each` says why).
      impl, dtype: the resampling kernel and the output dtype (`_resample_each`).

    Returns:
      [N, H, W, C] augmented images, values in [0, 1].
    """
    if images.ndim != 4 or strength.shape != images.shape[:1]:
        raise ValueError(
            f"augment_images: need images [N, H, W, C] and strength [N], got {images.shape} "
            f"and {strength.shape}"
        )
    h = images.shape[1]
    _check_ranges(min_scale, max_strength, "augment_images")
    st = jnp.clip(strength.astype(jnp.float32), 0.0, max_strength)  # [N]

    def affine(key, s):
        return _random_affine(
            key, s, min_scale=min_scale, max_rot_deg=max_rot_deg, max_shift=h / 2.0, flip=True
        )

    return _resample_each(affine, keys, images, st, chunk=chunk, impl=impl, dtype=dtype)


def augment_views(
    rng: jax.Array,
    views: jnp.ndarray,
    strength: jnp.ndarray,
    *,
    min_scale: float = 0.6,
    max_rot_deg: float = 10.0,
    max_strength: float = 1.0,
) -> jnp.ndarray:
    """Random resized crop + horizontal flip + small rotation, independently for every view.

    Args:
      rng: one PRNG key, or [B] keys (one per shape; its K views split it).
      views: [B, K, H, W, C] floats in [0, 1].
      strength: [B] per-shape augmentation strength; clipped to [0, max_strength].
      min_scale: smallest crop side fraction at strength 1.
      max_rot_deg: rotation range at strength 0.5 (scaled by 0.5 + strength).
      max_strength: upper clip of `strength`.

    Returns:
      [B, K, H, W, C] augmented views, same dtype, values in [0, 1].
    """
    if views.ndim != 5:
        raise ValueError(f"augment_views: views must be [B, K, H, W, C], got {views.shape}")
    b, k = views.shape[:2]
    if strength.shape != (b,):
        raise ValueError(f"augment_views: strength must be [{b}], got {strength.shape}")
    keys = view_keys(rng, b, k)  # [B, K]
    flat = lambda a: a.reshape((b * k,) + a.shape[2:])
    st = jnp.broadcast_to(strength[:, None], (b, k))
    out = augment_images(
        flat(keys),
        flat(views),
        flat(st),
        min_scale=min_scale,
        max_rot_deg=max_rot_deg,
        max_strength=max_strength,
    )
    return out.reshape(views.shape)


def elastic_field(key: jax.Array, size: int, alpha: float, grid: int = 4) -> jnp.ndarray:
    """A smooth random displacement field [2, size, size] in pixels (elastic deformation).

    Standard-normal offsets on a coarse `grid` x `grid` lattice, upsampled bilinearly to the
    image (so neighbouring pixels move together and strokes bend instead of breaking), times
    `alpha` pixels.

    Args:
      key: PRNG key.
      size: image side S.
      alpha: displacement scale in pixels (0: no deformation).
      grid: lattice side; smaller = smoother.

    Returns:
      [2, S, S] float32 (y, x) offsets.
    """
    coarse = jax.random.normal(key, (2, grid, grid), jnp.float32)
    return alpha * jax.image.resize(coarse, (2, size, size), "linear")


def erase_mask(key: jax.Array, size: int, num: int, frac: float) -> jnp.ndarray:
    """[S, S] float mask, 0 inside `num` random squares of side `frac` * S, 1 elsewhere.

    On a line drawing this drops pieces of strokes (a raster stand-in for stroke dropout): the
    rest of the drawing must still name the class.
    """
    side = jnp.maximum(jnp.round(frac * size), 1.0)
    corners = jax.random.uniform(key, (num, 2)) * (size - side)  # [num, 2] top-left (y, x)
    ii = jnp.arange(size, dtype=jnp.float32)
    inside_y = (ii[None] >= corners[:, :1]) & (ii[None] < corners[:, :1] + side)  # [num, S]
    inside_x = (ii[None] >= corners[:, 1:]) & (ii[None] < corners[:, 1:] + side)
    hole = (inside_y[:, :, None] & inside_x[:, None, :]).any(0)  # [S, S]
    return jnp.where(hole, 0.0, 1.0)


def augment_sketches(
    rng: jax.Array,
    images: jnp.ndarray,
    *,
    min_scale: float = 0.85,
    max_rot_deg: float = 8.0,
    flip: bool = True,
    elastic: float = 0.0,
    elastic_grid: int = 4,
    erase: int = 0,
    erase_frac: float = 0.2,
    chunk: int = 0,
    impl: str = "map_coordinates",
    dtype=None,
) -> jnp.ndarray:
    """Sketch augmentation: affine jitter (crop/zoom, shift, rotation, flip), optionally an
    elastic deformation and erased squares.

    Mirrored sketches are still sketches of the same class, so flipping is on by default.
    `elastic` and `erase` are off by default (the original recipe); with them each sketch gets
    its own random deformation and holes, drawn from its key alone.

    Args:
      rng: one PRNG key, or [B] keys (one per sketch).
      images: [B, S, S, 1] floats in [0, 1].
      min_scale: smallest crop side fraction.
      max_rot_deg: rotation range at the fixed mid strength (scaled by 1.0).
      flip: random horizontal flips.
      elastic: elastic displacement scale in pixels (`elastic_field`); 0: none.
      elastic_grid: the elastic field's coarse lattice side.
      erase: number of squares erased per sketch (`erase_mask`); 0: none.
      erase_frac: their side as a fraction of S.
      chunk: > 0: `chunk` sketches per call, matching the student's backbone chunks (see
        `augment_images`).
      impl, dtype: the resampling kernel and the output dtype (`_resample_each`; uint8
        sketches are normalised to [0, 1]).

    Returns:
      [B, S, S, 1] augmented sketches.
    """
    if images.ndim != 4:
        raise ValueError(f"augment_sketches: images must be [B, S, S, C], got {images.shape}")
    _check_ranges(min_scale, 0.5, "augment_sketches")
    if elastic < 0 or erase < 0 or not 0.0 < erase_frac < 1.0 or elastic_grid < 2:
        raise ValueError(
            f"augment_sketches: need elastic >= 0 ({elastic}), erase >= 0 ({erase}), "
            f"0 < erase_frac < 1 ({erase_frac}), elastic_grid >= 2 ({elastic_grid})"
        )
    keys = _item_keys(rng, images.shape[0], "augment_sketches")
    size = images.shape[1]

    def affine(key):
        return _random_affine(
            key,
            0.5,
            min_scale=min_scale,
            max_rot_deg=max_rot_deg,
            max_shift=images.shape[1] / 4.0,
            flip=flip,
        )

    if not elastic and not erase:  # the original recipe, draw for draw
        return _resample_each(affine, keys, images, chunk=chunk, impl=impl, dtype=dtype)
    if impl != "map_coordinates" or dtype is not None:
        raise ValueError(
            "augment_sketches: elastic/erase run on the map_coordinates kernel only "
            f"(augment_impl={impl!r})"
        )

    def one(key, img):  # img [S, S, C]
        k_aff, k_el, k_er = jax.random.split(key, 3)
        mat, shift = affine(k_aff)
        disp = elastic_field(k_el, size, elastic, elastic_grid) if elastic else None
        out = _affine_resample(img.astype(jnp.float32), mat, shift, disp)
        if erase:
            out = out * erase_mask(k_er, size, erase, erase_frac)[:, :, None]
        return out

    return in_chunks(jax.vmap(one), chunk, keys, images).astype(images.dtype)


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
