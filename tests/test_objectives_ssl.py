"""Teacher objectives (SSL, EMA) and long-tail tools (BCL, SDCLR) against numpy references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sb3dr_jax.models import build_model
from sb3dr_jax.objectives import get_objective, longtail, ssl

RNG = np.random.default_rng(1)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def byol_ref(pa, tb, pb, ta):
    cos = lambda u, v: (unit(u) * unit(v)).sum(-1)
    return (2 - 2 * cos(pa, tb)) + (2 - 2 * cos(pb, ta))


def test_byol_matches_reference_and_stops_target_gradients():
    pa, tb, pb, ta = (RNG.normal(size=(4, 6)).astype(np.float32) for _ in range(4))
    out = jax.jit(ssl.byol_loss)(pa, tb, pb, ta)
    chex.assert_shape(out, (4,))
    np.testing.assert_allclose(out, byol_ref(pa, tb, pb, ta), rtol=1e-5, atol=1e-6)
    # Scale invariance: cosines only.
    np.testing.assert_allclose(ssl.byol_loss(3 * pa, tb, pb, 0.5 * ta), out, rtol=1e-5)
    # Identical prediction and target: zero loss; opposite: the maximum 8.
    np.testing.assert_allclose(ssl.byol_loss(pa, pa, pb, pb), 0.0, atol=1e-5)
    np.testing.assert_allclose(ssl.byol_loss(pa, -pa, pb, -pb), 8.0, rtol=1e-5)
    g_t = jax.grad(lambda t: ssl.byol_loss(pa, t, pb, ta).sum())(jnp.asarray(tb))
    g_p = jax.grad(lambda p: ssl.byol_loss(p, tb, pb, ta).sum())(jnp.asarray(pa))
    np.testing.assert_array_equal(g_t, 0.0)  # sg(z')
    assert float(jnp.abs(g_p).sum()) > 0  # the online branch learns


def test_simsiam_is_byol_maths_with_stop_gradient_on_own_projections():
    p, z = jnp.asarray(RNG.normal(size=(3, 5))), jnp.asarray(RNG.normal(size=(3, 5)))
    # SimSiam's targets are the online projections; gradients must not flow into them.
    loss = lambda zz: ssl.simsiam_loss(p, zz, p[::-1], zz[::-1]).sum()
    np.testing.assert_allclose(
        ssl.simsiam_loss(p, z, p[::-1], z[::-1]), byol_ref(p, z, p[::-1], z[::-1]), rtol=1e-5
    )
    np.testing.assert_array_equal(jax.grad(loss)(z), 0.0)


def per_view_ref(pred, target):
    """Mean over ordered pairs a != c of 2 - 2 cos(pred[a], target[c]), per shape."""
    b, k = pred.shape[:2]
    pairs = [(a, c) for a in range(k) for c in range(k) if a != c]
    return [
        np.mean([2 - 2 * unit(pred[i, a]) @ unit(target[i, c]) for a, c in pairs]) for i in range(b)
    ]


def test_per_view_loss_averages_all_ordered_pairs():
    b, k, p = 2, 4, 5
    pred, target = RNG.normal(size=(b, k, p)), RNG.normal(size=(b, k, p))
    out = ssl.per_view_loss(pred, target)
    chex.assert_shape(out, (b,))
    np.testing.assert_allclose(out, per_view_ref(pred, target), rtol=1e-5)
    # Diagonal pairs are excluded: a view's target identical to its prediction changes nothing.
    t2 = target.copy()
    t2[:, 0] = pred[:, 0]
    np.testing.assert_allclose(ssl.per_view_loss(pred, t2), per_view_ref(pred, t2), rtol=1e-5)


@pytest.mark.parametrize("k,total,base", [(0, 100, 0.99), (25, 100, 0.99), (100, 100, 0.996)])
def test_ema_tau_cosine_schedule(k, total, base):
    ref = 1 - (1 - base) * (np.cos(np.pi * k / total) + 1) / 2
    np.testing.assert_allclose(ssl.ema_tau(k, total, base), ref, rtol=1e-6)


def test_ema_tau_endpoints_and_clamp():
    np.testing.assert_allclose(ssl.ema_tau(0, 10, 0.9), 0.9, rtol=1e-6)  # tau_base at start
    np.testing.assert_allclose(ssl.ema_tau(10, 10, 0.9), 1.0, rtol=1e-6)  # 1 at the end
    np.testing.assert_allclose(ssl.ema_tau(50, 10, 0.9), 1.0, rtol=1e-6)  # clamped past K
    taus = jax.jit(jax.vmap(lambda s: ssl.ema_tau(s, 10, 0.9)))(jnp.arange(11))
    assert bool(jnp.all(jnp.diff(taus) >= 0))  # monotone


def test_ema_update_leafwise():
    tgt = {"a": jnp.ones((2, 3)), "b": {"c": jnp.full(4, 2.0)}}
    onl = {"a": jnp.zeros((2, 3)), "b": {"c": jnp.full(4, 4.0)}}
    out = ssl.ema_update(tgt, onl, 0.75)
    np.testing.assert_allclose(out["a"], 0.75)
    np.testing.assert_allclose(out["b"]["c"], 0.75 * 2 + 0.25 * 4)
    np.testing.assert_allclose(ssl.ema_update(tgt, onl, 1.0)["a"], 1.0)  # tau=1 freezes


def test_bcl_accumulate_and_update_per_formula():
    n, beta = 6, 0.97
    mem = RNG.uniform(size=n).astype(np.float32)
    s, c = jnp.zeros(n), jnp.zeros(n)
    steps = [(np.array([0, 3, 3]), np.array([1.0, 2.0, 4.0])), (np.array([3, 5]), [6.0, 0.5])]
    for idx, loss in steps:
        s, c = jax.jit(longtail.bcl_accumulate)(s, c, idx, jnp.asarray(loss))
    np.testing.assert_allclose(s, [1, 0, 0, 12, 0, 0.5])
    np.testing.assert_allclose(c, [1, 0, 0, 3, 0, 1])
    new = longtail.bcl_update(jnp.asarray(mem), s, c, beta)
    ref = mem.copy()
    for i, mean in [(0, 1.0), (3, 4.0), (5, 0.5)]:
        ref[i] = beta * mem[i] + (1 - beta) * mean
    np.testing.assert_allclose(new, ref, rtol=1e-6)  # unseen shapes keep their memory


def test_bcl_weights_formula_range_and_all_equal():
    m = RNG.normal(size=9)
    c = m - m.mean()
    w = longtail.bcl_weights(jnp.asarray(m))
    np.testing.assert_allclose(w, 0.5 + 0.5 * c / np.abs(c).max(), rtol=1e-5, atol=1e-6)
    assert float(w.min()) >= 0 and float(w.max()) <= 1
    assert np.isclose(float(w.max()), 1.0) or np.isclose(float(w.min()), 0.0)
    # The highest-loss shape gets the largest weight (augmented most).
    assert int(jnp.argmax(w)) == int(np.argmax(m))
    flat = longtail.bcl_weights(jnp.full(5, 2.5))
    np.testing.assert_array_equal(flat, 0.5)  # no NaN from 0/0
    g = jax.grad(lambda x: longtail.bcl_weights(x).sum())(jnp.full(5, 2.5))
    assert bool(jnp.all(jnp.isfinite(g)))


def _tiny_params():
    m = build_model(
        "ssl_teacher",
        backbone="resnet_tiny",
        num_filters=4,
        proj_hidden=8,
        proj_dim=4,
        pred_hidden=8,
    )
    return m.init(jax.random.key(0), jnp.zeros((1, 2, 16, 16, 3)))["params"]


def test_sdclr_masks_prune_smallest_kernel_weights_only():
    params = _tiny_params()
    p = 0.7
    masks = jax.jit(lambda q: longtail.sdclr_masks(q, p))(params)
    chex.assert_trees_all_equal_shapes(masks, params)
    flat_p = jax.tree_util.tree_leaves_with_path(params)
    flat_m = jax.tree_util.tree_leaves(masks)
    kernels = 0
    for (path, w), m in zip(flat_p, flat_m, strict=True):
        m, w = np.asarray(m), np.asarray(w)
        assert set(np.unique(m)) <= {0.0, 1.0}
        if path[-1].key != "kernel":
            np.testing.assert_array_equal(m, 1.0)  # biases and norm params untouched
            continue
        kernels += 1
        a = np.abs(w).ravel()
        k = int(np.floor(p * a.size))
        np.testing.assert_allclose(1 - m.mean(), k / a.size)  # exactly p of the kernel masked
        if 0 < k < a.size:
            # Every masked weight is no larger than every kept one.
            assert a[m.ravel() == 0].max() <= a[m.ravel() == 1].min()
    assert kernels >= 10
    pruned = longtail.apply_masks(params, masks)
    chex.assert_trees_all_equal_structs(pruned, params)
    for w, m, q in zip(
        jax.tree_util.tree_leaves(params), flat_m, jax.tree_util.tree_leaves(pruned), strict=True
    ):
        np.testing.assert_array_equal(q, np.asarray(w) * np.asarray(m))


def test_sdclr_prune_ratio_zero_keeps_everything():
    params = {"dense": {"kernel": jnp.asarray(RNG.normal(size=(5, 4))), "bias": jnp.ones(4)}}
    m = longtail.sdclr_masks(params, 0.0)
    np.testing.assert_array_equal(m["dense"]["kernel"], 1.0)
    m = longtail.sdclr_masks(params, 0.5)
    assert int((m["dense"]["kernel"] == 0).sum()) == 10


def test_registry_names_for_teacher_objectives():
    assert get_objective("byol") is ssl.byol_loss
    assert get_objective("simsiam") is ssl.simsiam_loss
    assert get_objective("per_view") is ssl.per_view_loss
    with pytest.raises(ValueError, match="unknown 'moco'"):
        get_objective("moco")
