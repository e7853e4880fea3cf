"""On-device view/sketch augmentation and the BCL strength draw."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sb3dr_jax.train.augment import (
    _affine_resample,
    augment_images,
    augment_sketches,
    augment_views,
    bcl_strength,
    elastic_field,
    erase_mask,
    view_keys,
)


def _blob_views(b=3, k=2, s=32, c=1):
    """A bright centred square on a zero background (like a rendered silhouette)."""
    return jnp.zeros((b, k, s, s, c)).at[:, :, 10:22, 8:24].set(1.0)


def test_views_shape_dtype_range_and_determinism():
    x = _blob_views(c=3)
    st = jnp.array([0.0, 0.5, 1.0])
    f = jax.jit(augment_views)
    a = f(jax.random.key(0), x, st)
    chex.assert_shape(a, x.shape)
    chex.assert_type(a, jnp.float32)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0 + 1e-6  # bilinear + zero fill
    np.testing.assert_array_equal(a, f(jax.random.key(0), x, st))
    assert not np.allclose(a, f(jax.random.key(1), x, st))
    # Views of one shape get independent draws.
    assert not np.allclose(a[:, 0], a[:, 1])
    bf = augment_views(jax.random.key(0), x.astype(jnp.bfloat16), st)
    chex.assert_type(bf, jnp.bfloat16)
    raw = augment_views(jax.random.PRNGKey(0), x, st)  # raw uint32 keys work too
    chex.assert_shape(raw, x.shape)


def test_per_item_keys_make_items_independent_of_the_batch_split():
    x = jax.random.uniform(jax.random.key(5), (4, 2, 16, 16, 1))
    st = jnp.array([0.0, 0.3, 0.6, 1.0])
    keys = jax.random.split(jax.random.key(7), 4)
    full = augment_views(keys, x, st)
    halves = [augment_views(keys[i : i + 2], x[i : i + 2], st[i : i + 2]) for i in (0, 2)]
    np.testing.assert_allclose(jnp.concatenate(halves), full, atol=1e-6)
    # A batch of one with key r draws exactly as item key r (callers vmap over items).
    one = jax.vmap(lambda kk, xi, si: augment_views(kk, xi[None], si[None])[0])(keys, x, st)
    np.testing.assert_allclose(one, full, atol=1e-6)
    # Flat per-view keys (`view_keys`) draw the same; so do chunked calls, even or uneven.
    vk = view_keys(keys, 4, 2).reshape(8)
    flat_st = jnp.repeat(st, 2)
    flat = augment_images(vk, x.reshape(8, 16, 16, 1), flat_st)
    chex.assert_trees_all_close(flat.reshape(x.shape), full, atol=1e-6)
    for chunk in (2, 3, 8, 16):
        chunked = augment_images(vk, x.reshape(8, 16, 16, 1), flat_st, chunk=chunk)
        chex.assert_trees_all_close(chunked, flat, atol=1e-6)
    # Reordered keys follow their images: the draw belongs to the key, not the position.
    rev = augment_images(vk[::-1], x.reshape(8, 16, 16, 1)[::-1], flat_st[::-1], chunk=3)
    chex.assert_trees_all_close(rev[::-1], flat, atol=1e-6)
    sk = augment_sketches(keys, x[:, 0])
    np.testing.assert_allclose(augment_sketches(keys[1:3], x[1:3, 0]), sk[1:3], atol=1e-6)
    chex.assert_trees_all_close(augment_sketches(keys, x[:, 0], chunk=3), sk, atol=1e-6)


def test_strength_zero_still_augments_and_one_changes_more():
    many = jnp.repeat(_blob_views(b=1, k=4), 32, axis=0)  # one shape, 32 x 4 draws
    weak = augment_views(jax.random.key(3), many, jnp.zeros(32))
    strong = augment_views(jax.random.key(3), many, jnp.ones(32))
    change = lambda y: float(jnp.abs(y - many).mean())
    assert change(weak) > 0.0  # the base augmentation is never the identity
    assert change(strong) > change(weak)
    # Strength is clipped to max_strength: 5 behaves like 1.
    np.testing.assert_allclose(
        augment_views(jax.random.key(3), many, jnp.full(32, 5.0)), strong, atol=1e-6
    )


def test_content_is_preserved():
    x = _blob_views(b=8, k=3)
    a = augment_views(jax.random.key(11), x, jnp.linspace(0, 1, 8))
    ratio = np.asarray(a.sum(axis=(2, 3, 4)) / x.sum(axis=(2, 3, 4)))  # [B, K]
    # A crop zooms in (mass grows by up to 1 / scale^2), rotation and flip keep it: never lost.
    assert ratio.min() > 0.7 and ratio.max() < 1.0 / 0.6**2 + 0.2
    assert 0.9 < float(ratio.mean()) < 2.0
    # The blob stays near the centre of every view.
    ys = np.arange(32)[None, None, :, None]
    cy = np.asarray((a[..., 0].sum(3) * ys[..., 0]).sum(2) / a[..., 0].sum((2, 3)))
    assert np.all(np.abs(cy - 15.5) < 8)


def test_augment_sketches_jitter():
    img = jnp.zeros((6, 32, 32, 1)).at[:, 6:26, 15:17].set(1.0)  # a vertical stroke
    a = jax.jit(augment_sketches)(jax.random.key(0), img)
    chex.assert_shape(a, img.shape)
    np.testing.assert_allclose(a, augment_sketches(jax.random.key(0), img), atol=1e-5)
    assert float(jnp.abs(a - img).mean()) > 0.0
    ratio = np.asarray(a.sum((1, 2, 3)) / img.sum((1, 2, 3)))
    assert ratio.min() > 0.8 and ratio.max() < 1.0 / 0.85**2 + 0.1
    b = augment_sketches(jax.random.key(0), img, flip=False)
    chex.assert_shape(b, img.shape)


def test_elastic_resampling_matches_scipy_and_field_is_smooth_and_seeded():
    from scipy import ndimage

    img = np.zeros((24, 24, 1), np.float32)
    img[4:20, 11:13] = 1.0
    disp = elastic_field(jax.random.key(3), 24, 2.0, grid=4)  # [2, S, S]
    chex.assert_shape(disp, (2, 24, 24))
    np.testing.assert_array_equal(disp, elastic_field(jax.random.key(3), 24, 2.0, grid=4))
    assert not np.allclose(disp, elastic_field(jax.random.key(4), 24, 2.0, grid=4))
    # Smooth: neighbouring pixels move nearly together.
    assert float(jnp.abs(jnp.diff(disp, axis=1)).max()) < 2.0
    out = _affine_resample(jnp.asarray(img), jnp.eye(2), jnp.zeros(2), disp)
    yy, xx = np.meshgrid(np.arange(24.0), np.arange(24.0), indexing="ij")
    d = np.asarray(disp)
    ref = ndimage.map_coordinates(img[..., 0], [yy + d[0], xx + d[1]], order=1, mode="constant")
    np.testing.assert_allclose(np.asarray(out[..., 0]), ref, atol=1e-5)


def test_erase_mask_numpy_reference():
    key = jax.random.key(0)
    m = np.asarray(erase_mask(key, 20, 2, 0.25))
    corners = np.asarray(jax.random.uniform(key, (2, 2)) * (20 - 5))
    ref = np.ones((20, 20), np.float32)
    ii = np.arange(20)
    for y0, x0 in corners:
        ys = (ii >= y0) & (ii < y0 + 5)
        xs = (ii >= x0) & (ii < x0 + 5)
        ref[np.ix_(ys, xs)] = 0.0
    np.testing.assert_array_equal(m, ref)
    assert 0 < (m == 0).sum() <= 2 * 25


def test_augment_sketches_elastic_and_erase_options():
    img = jnp.zeros((4, 32, 32, 1)).at[:, 6:26, 15:17].set(1.0)
    f = jax.jit(lambda k, x: augment_sketches(k, x, elastic=2.0, erase=2, erase_frac=0.25))
    a = f(jax.random.key(0), img)
    chex.assert_shape(a, img.shape)
    np.testing.assert_array_equal(a, f(jax.random.key(0), img))  # deterministic from the key
    base = augment_sketches(jax.random.key(0), img)
    assert not np.allclose(a, base)
    assert float(a.sum()) < float(base.sum()) * 1.2  # erasing removes ink
    # Per-item keys: an item's result does not depend on the rest of the batch.
    keys = jax.random.split(jax.random.key(1), 4)
    full = augment_sketches(keys, img, elastic=2.0, erase=1)
    part = augment_sketches(keys[2:], img[2:], elastic=2.0, erase=1, chunk=1)
    np.testing.assert_allclose(full[2:], part, atol=1e-6)
    with pytest.raises(ValueError, match="elastic"):
        augment_sketches(jax.random.key(0), img, elastic=-1.0)


def test_bcl_strength_probability_and_magnitude():
    n, s = 4000, 2.0
    for w in (0.0, 0.5, 1.0):
        st = np.asarray(bcl_strength(jax.random.key(1), jnp.full(n, w), s))
        assert st.min() >= 0.0 and st.max() <= s * w + 1e-6
        strong = st > 0
        # P(strong) = w; magnitude s * w * U(0, 1) has mean s * w / 2.
        np.testing.assert_allclose(strong.mean(), w, atol=0.03)
        if w > 0:
            np.testing.assert_allclose(st[strong].mean(), s * w / 2, rtol=0.06)
    keys = jax.random.split(jax.random.key(2), 6)
    w = jnp.linspace(0, 1, 6)
    np.testing.assert_array_equal(bcl_strength(keys, w)[2:4], bcl_strength(keys[2:4], w[2:4]))
    single = jax.vmap(lambda kk, wi: bcl_strength(kk, wi[None])[0])(keys, w)
    np.testing.assert_allclose(single, bcl_strength(keys, w), rtol=1e-6)


def test_bad_inputs_raise():
    x = _blob_views()
    with pytest.raises(ValueError, match="strength must be"):
        augment_views(jax.random.key(0), x, jnp.zeros(2))
    with pytest.raises(ValueError, match="one PRNG key or 3 keys"):
        augment_views(jax.random.split(jax.random.key(0), 2), x, jnp.zeros(3))
    with pytest.raises(ValueError, match="min_scale"):
        augment_views(jax.random.key(0), x, jnp.zeros(3), min_scale=0.0)
    with pytest.raises(ValueError, match="augment_images: need images"):
        augment_images(jax.random.split(jax.random.key(0), 3), x[:, 0], jnp.zeros(2))
    with pytest.raises(ValueError, match="views must be"):
        augment_views(jax.random.key(0), x[:, 0], jnp.zeros(3))
    with pytest.raises(ValueError, match="images must be"):
        augment_sketches(jax.random.key(0), x)


def test_rows_resampling_matches_map_coordinates():
    # impl="rows" (one gather of whole pixels, from uint8) is the same bilinear resampling.
    rs = np.random.RandomState(3)
    img = rs.randint(0, 256, (6, 24, 20, 3)).astype(np.uint8)
    keys = jax.random.split(jax.random.key(4), 6)
    st = jnp.asarray(rs.rand(6), jnp.float32)
    ref = augment_images(keys, jnp.asarray(img) / 255.0, st)
    for x in (jnp.asarray(img), jnp.asarray(img) / 255.0):
        out = augment_images(keys, x, st, impl="rows", chunk=4)
        chex.assert_trees_all_close(out, ref, atol=1e-5)
        assert out.dtype == jnp.float32
    bf = augment_images(keys, jnp.asarray(img), st, impl="rows", dtype=jnp.bfloat16)
    assert bf.dtype == jnp.bfloat16
    chex.assert_trees_all_close(bf.astype(jnp.float32), ref, atol=1e-2)
    sk = augment_sketches(keys, jnp.asarray(img[..., :1]), impl="rows")
    chex.assert_trees_all_close(sk, augment_sketches(keys, img[..., :1] / 255.0), atol=1e-5)
    with pytest.raises(ValueError, match="augment.impl"):
        augment_images(keys, jnp.asarray(img), st, impl="nearest")
