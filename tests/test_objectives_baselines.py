"""Baseline losses from the literature (METHODS.md section 4) against numpy references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sb3dr_jax.objectives import baselines, get_objective

RNG = np.random.default_rng(3)


def d2(u, v):
    return ((u[:, None] - v[None]) ** 2).sum(-1)


def rowdist(u, v):
    return np.linalg.norm(u - v, axis=-1)


def test_siamese_pair_and_three_branch_loss():
    a, b = RNG.normal(size=(6, 4)), RNG.normal(size=(6, 4))
    same = np.array([1, 0, 1, 0, 0, 1], bool)
    c_p, c_n = 0.2, 10.0
    alpha, beta, gamma = 1 / c_p, c_n, -2.77 / c_n
    d = rowdist(a, b)
    # y = 0 for the same class: (1 - y) alpha D^2 + y beta exp(gamma D).
    ref = np.where(same, alpha * d**2, beta * np.exp(gamma * d))
    out = baselines.siamese_pair_loss(a, b, same)
    chex.assert_shape(out, (6,))
    np.testing.assert_allclose(out, ref, rtol=1e-5)
    s2, v2 = RNG.normal(size=(6, 4)), RNG.normal(size=(6, 4))
    same2, same3 = ~same, np.ones(6, bool)
    pair = lambda x, y, m: np.where(
        m, alpha * rowdist(x, y) ** 2, beta * np.exp(gamma * rowdist(x, y))
    )
    ref = pair(a, s2, same) + pair(b, v2, same2) + pair(a, b, same3)
    np.testing.assert_allclose(
        baselines.siamese_loss(a, s2, b, v2, same, same2, same3), ref, rtol=1e-5
    )


def test_dcml_within_cross_and_structure_terms():
    s, t = RNG.normal(size=(5, 3)), RNG.normal(size=(5, 3))
    ys, yt = np.array([0, 1, 0, 2, 1]), np.array([0, 1, 0, 2, 1])
    h, alpha = 1.5, 0.3
    off = ~np.eye(5, dtype=bool)

    def con(dd, same, mask):
        return np.where(same, dd, np.maximum(0, h - dd))[mask].mean()

    l_d = con(d2(s, s), ys[:, None] == ys[None], off) + con(d2(t, t), yt[:, None] == yt[None], off)
    l_c = con(d2(s, t), ys[:, None] == yt[None], np.ones((5, 5), bool))
    l_2c = ((np.sqrt(d2(s, s)) - np.sqrt(d2(t, t))) ** 2)[off].mean()
    out = baselines.dcml_loss(s, ys, t, yt, alpha, h)
    chex.assert_shape(out, ())
    np.testing.assert_allclose(out, alpha * l_d + (1 - alpha) * (l_c + l_2c), rtol=1e-4)
    g = jax.grad(lambda x: baselines.dcml_loss(x, ys, t, yt, alpha, h))(jnp.asarray(s))
    assert bool(jnp.all(jnp.isfinite(g)))  # sqrt at the zero diagonal is guarded


def _ibp_barycentre(hists, cost, eps, iters):
    """Benamou et al. 2015, Algorithm (iterative Bregman projections), uniform weights."""
    k = np.exp(-cost / eps)
    v = np.ones_like(hists)
    for _ in range(iters):
        u = hists / (v @ k.T)  # u_k = a_k / (K v_k)
        ktu = u @ k  # K^T u_k
        b = np.exp(np.log(ktu).mean(0))
        v = b[None] / ktu
    return b


def test_sinkhorn_barycentre_matches_bregman_reference():
    n = 8
    grid = np.linspace(0, 1, n)
    cost = (grid[:, None] - grid[None]) ** 2
    hists = RNG.uniform(0.05, 1.0, size=(3, n))
    hists /= hists.sum(1, keepdims=True)
    out = jax.jit(baselines.sinkhorn_barycentre, static_argnums=(2, 3))(
        jnp.asarray(hists, jnp.float32), jnp.asarray(cost, jnp.float32), 0.1, 300
    )
    chex.assert_shape(out, (n,))
    np.testing.assert_allclose(out, _ibp_barycentre(hists, cost, 0.1, 301), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(float(out.sum()), 1.0, rtol=1e-3)


def test_wasserstein_barycentre_of_two_bumps_lies_between_them():
    # The Euclidean mean of two bumps is bimodal; the Wasserstein barycentre moves the mass.
    n = 11
    grid = np.linspace(0, 1, n)
    bump = lambda i: np.exp(-((np.arange(n) - i) ** 2) / 0.5) + 1e-6
    hists = np.stack([bump(2), bump(8)])
    hists /= hists.sum(1, keepdims=True)
    out = np.asarray(
        baselines.sinkhorn_barycentre(
            jnp.asarray(hists), (grid[:, None] - grid[None]) ** 2, 0.01, 200
        )
    )
    assert int(out.argmax()) == 5
    np.testing.assert_allclose((out * grid).sum() / out.sum(), 0.5, atol=0.02)


def test_lwbr_descriptor_and_margin_loss():
    vf = RNG.normal(size=(2, 4, 6)).astype(np.float32)  # [B, V, F]
    desc = baselines.lwbr_descriptor(jnp.asarray(vf), eps=0.1, iters=50)
    chex.assert_shape(desc, (2, 6))
    np.testing.assert_allclose(desc.sum(1), 1.0, rtol=1e-3)
    grid = np.linspace(0, 1, 6)
    sm = np.exp(vf) / np.exp(vf).sum(-1, keepdims=True)
    ref = _ibp_barycentre(sm[1].astype(np.float64), (grid[:, None] - grid[None]) ** 2, 0.1, 51)
    np.testing.assert_allclose(desc[1], ref, rtol=1e-3, atol=1e-5)
    s, ys = RNG.normal(size=(3, 4)), np.array([0, 1, 1])
    sh, ysh = RNG.normal(size=(4, 4)) * 0.3, np.array([1, 0, 2, 1])
    dd = d2(s, sh)
    ref = np.where(ys[:, None] == ysh[None], dd, np.maximum(0, 1.2 - dd)).mean()
    np.testing.assert_allclose(baselines.lwbr_loss(s, ys, sh, ysh, 1.2), ref, rtol=1e-5)


def test_dca_iaml_cmd_and_combined():
    z, y = RNG.normal(size=(6, 3)), np.array([0, 1, 2, 0, 1, 3])  # class 2 and 3: no positive
    dm = np.sqrt(d2(z, z))
    ref = []
    for i in range(6):
        pos = [dm[i, j] for j in range(6) if y[j] == y[i] and j != i]
        neg = [dm[i, j] for j in range(6) if y[j] != y[i]]
        ref.append(max(0, 0.5 - (min(neg) - max(pos))) if pos else 0.0)
    iaml = baselines.iaml_loss(z, y, 0.5)
    np.testing.assert_allclose(iaml, ref, rtol=1e-4)
    zs, yss = RNG.normal(size=(4, 3)), np.array([0, 0, 2, 4])
    ref_cmd = sum(np.linalg.norm(z[y == k].mean(0) - zs[yss == k].mean(0)) for k in (0, 2))
    cmd = baselines.class_mean_discrepancy(z, y, zs, yss, 5)  # classes 1, 3, 4: one domain only
    np.testing.assert_allclose(cmd, ref_cmd, rtol=1e-5)
    total = baselines.dca_loss(z, y, zs, yss, 5, eta=0.5, w_cmd=0.3)
    ref_total = np.mean(ref) + baselines.iaml_loss(zs, yss, 0.5).mean() + 0.3 * ref_cmd
    np.testing.assert_allclose(total, ref_total, rtol=1e-5)


def test_triplet_centre_loss():
    f, y, c = RNG.normal(size=(5, 3)), np.array([0, 1, 2, 0, 1]), RNG.normal(size=(3, 3))
    dd = 0.5 * d2(f, c)
    ref = [
        max(0, dd[i, y[i]] + 0.7 - min(dd[i, j] for j in range(3) if j != y[i])) for i in range(5)
    ]
    np.testing.assert_allclose(baselines.triplet_centre_loss(f, y, c, 0.7), ref, rtol=1e-5)
    # Features on their own centres, centres far apart: no loss.
    far = np.eye(3) * 10.0
    np.testing.assert_allclose(baselines.triplet_centre_loss(far[y], y, far, 1.0), 0.0)


def test_domain_balanced_quadruplet():
    a, p, nv, ns = (RNG.normal(size=(4, 3)) for _ in range(4))
    m = 0.3
    ref = np.maximum(0, m + rowdist(a, p) - rowdist(a, nv)) + np.maximum(
        0, m + rowdist(a, p) - rowdist(a, ns)
    )
    out = baselines.quadruplet_loss(a, p, nv, ns, m)
    chex.assert_shape(out, (4,))
    np.testing.assert_allclose(out, ref, rtol=1e-5)


def _log_softmax(x):
    return (
        x
        - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - x.max(-1, keepdims=True)
    )


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_soft_target_kl_and_cross_modal_self_distillation(temp):
    c = 4
    logits = RNG.normal(size=(3, c))
    probs = RNG.dirichlet(np.ones(c), size=3)
    lp = _log_softmax(logits / temp)
    ref = temp**2 * (probs * (np.log(probs) - lp)).sum(1)
    np.testing.assert_allclose(baselines.soft_target_kl(logits, probs, temp), ref, rtol=1e-5)
    g = jax.grad(lambda q: baselines.soft_target_kl(logits, q, temp).sum())(jnp.asarray(probs))
    np.testing.assert_array_equal(g, 0.0)  # soft targets are constants
    labels = np.array([2, 0, 2])
    view_p, mem_p = RNG.dirichlet(np.ones(c), size=c), RNG.dirichlet(np.ones(c), size=c)
    kl = lambda t: temp**2 * (t * (np.log(t) - lp)).sum(1)
    ref = kl(view_p[labels]) + 0.25 * kl(mem_p[labels])
    out = baselines.cross_modal_self_distillation(logits, labels, view_p, mem_p, temp, 0.25)
    np.testing.assert_allclose(out, ref, rtol=1e-5)


@pytest.mark.parametrize(
    "name,attr",
    [("siamese", "siamese_loss"), ("dcml", "dcml_loss"), ("lwbr", "lwbr_loss"), ("dca", "dca_loss")]
    + [
        ("dca_iaml", "iaml_loss"),
        ("dca_cmd", "class_mean_discrepancy"),
        ("tcl", "triplet_centre_loss"),
    ]
    + [("quadruplet", "quadruplet_loss"), ("soft_target_kl", "soft_target_kl")]
    + [("cross_modal_self_distillation", "cross_modal_self_distillation")],
)
def test_registry_maps_baseline_names(name, attr):
    assert get_objective(name) is getattr(baselines, attr)


def test_registry_rejects_unknown_names():
    with pytest.raises(ValueError, match="choose from"):
        get_objective("sem")


def test_cosine_logits_and_am_softmax():
    z, w = RNG.normal(size=(5, 4)), RNG.normal(size=(4, 3))
    y = np.array([0, 2, 1, 1, 0])
    s, m = 8.0, 0.3
    cos = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0))
    np.testing.assert_allclose(baselines.cosine_logits(z, w, s), s * cos, rtol=1e-5)
    logits = s * cos - s * m * np.eye(3)[y]
    ref = -(logits[np.arange(5), y] - np.log(np.exp(logits).sum(1)))
    out = baselines.am_softmax_loss(z, y, w, s, m)
    chex.assert_shape(out, (5,))
    np.testing.assert_allclose(out, ref, rtol=1e-5)
