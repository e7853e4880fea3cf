"""Every objective against a plain numpy reference on tiny inputs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sb3dr_jax.objectives import baselines, get_objective, kd, longtail, ssl, triplet

RNG = np.random.default_rng(0)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def cosd(a, b):
    return 1 - unit(a) @ unit(b).T


def test_byol_and_per_view():
    pa, tb, pb, ta = (RNG.normal(size=(3, 5)) for _ in range(4))
    ref = (2 - 2 * (unit(pa) * unit(tb)).sum(1)) + (2 - 2 * (unit(pb) * unit(ta)).sum(1))
    np.testing.assert_allclose(ssl.byol_loss(pa, tb, pb, ta), ref, rtol=1e-5)
    np.testing.assert_allclose(ssl.simsiam_loss(pa, tb, pb, ta), ref, rtol=1e-5)
    p, t = RNG.normal(size=(2, 4, 5)), RNG.normal(size=(2, 4, 5))
    ref = [
        np.mean(
            [2 - 2 * unit(p[b, i]) @ unit(t[b, j]) for i in range(4) for j in range(4) if i != j]
        )
        for b in range(2)
    ]
    np.testing.assert_allclose(ssl.per_view_loss(p, t), ref, rtol=1e-5)
    g = jax.grad(lambda t: ssl.byol_loss(pa, t, pb, ta).sum())(jnp.asarray(tb))
    np.testing.assert_array_equal(g, 0)  # stop-gradient on the targets


def test_ema_schedule():
    for k, total, base in [(0, 100, 0.99), (50, 100, 0.99), (100, 100, 0.996), (7, 10, 0.9)]:
        ref = 1 - (1 - base) * (np.cos(np.pi * k / total) + 1) / 2
        np.testing.assert_allclose(ssl.ema_tau(k, total, base), ref, rtol=1e-6)
    out = ssl.ema_update({"w": jnp.ones(2)}, {"w": jnp.zeros(2)}, 0.9)
    np.testing.assert_allclose(out["w"], 0.9)


def test_bcl_memory_and_weights():
    mem, s, c = np.zeros(5), np.zeros(5), np.zeros(5)
    idx, loss = np.array([0, 2, 2]), np.array([1.0, 3.0, 5.0])
    s, c = longtail.bcl_accumulate(jnp.asarray(s), jnp.asarray(c), idx, loss)
    np.testing.assert_allclose(s, [1, 0, 8, 0, 0])
    new = longtail.bcl_update(jnp.asarray(mem) + 2.0, s, c, 0.97)
    np.testing.assert_allclose(new, [0.97 * 2 + 0.03 * 1, 2, 0.97 * 2 + 0.03 * 4, 2, 2], rtol=1e-6)
    m = np.array([1.0, 2.0, 6.0, 3.0])
    cm = m - m.mean()
    np.testing.assert_allclose(
        longtail.bcl_weights(m), 0.5 + 0.5 * cm / np.abs(cm).max(), rtol=1e-6
    )
    w = longtail.bcl_weights(jnp.full(4, 3.0))
    np.testing.assert_allclose(w, 0.5)
    assert float(longtail.bcl_weights(m).min()) >= 0 and float(longtail.bcl_weights(m).max()) <= 1


def test_sdclr_masks():
    params = {"dense": {"kernel": jnp.asarray(RNG.normal(size=(10, 10))), "bias": jnp.ones(10)}}
    masks = longtail.sdclr_masks(params, 0.7)
    k = np.abs(np.asarray(params["dense"]["kernel"])).ravel()
    np.testing.assert_array_equal(np.asarray(masks["dense"]["kernel"]).ravel(), k >= np.sort(k)[70])
    assert float(masks["dense"]["kernel"].mean()) == pytest.approx(0.3)
    np.testing.assert_array_equal(masks["dense"]["bias"], 1)
    pruned = longtail.apply_masks(params, masks)
    assert int((pruned["dense"]["kernel"] == 0).sum()) == 70


def test_centres_and_centre_alignment():
    t, y = RNG.normal(size=(6, 4)), np.array([0, 0, 1, 1, 1, 3])
    c = kd.class_centres(t, y, 4)
    ref = np.stack(
        [unit(unit(t)[y == k].sum(0)) if (y == k).any() else np.zeros(4) for k in range(4)]
    )
    np.testing.assert_allclose(c, ref, rtol=1e-5, atol=1e-6)
    s, ys = RNG.normal(size=(3, 4)), np.array([0, 1, 3])
    cc = RNG.normal(size=(4, 4))
    d = cosd(s, cc)
    ref = [d[i, ys[i]] - 0.1 * np.mean([d[i, j] for j in range(4) if j != ys[i]]) for i in range(3)]
    np.testing.assert_allclose(kd.centre_alignment_loss(s, ys, cc, 0.1), ref, rtol=1e-5)


def test_relational_and_soft_label():
    s, t = RNG.normal(size=(5, 4)), RNG.normal(size=(5, 3))
    gs, gt = unit(s @ s.T), unit(t @ t.T)
    np.testing.assert_allclose(kd.relational_kd_loss(s, t), ((gs - gt) ** 2).sum() / 25, rtol=1e-5)
    c, temp = RNG.normal(size=(3, 4)), 0.5
    tt = RNG.normal(size=(5, 4))

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    ps, pt = softmax((1 - cosd(s, c)) / temp), softmax((1 - cosd(tt, c)) / temp)
    ref = temp**2 * (pt * (np.log(pt) - np.log(ps))).sum(1)
    np.testing.assert_allclose(kd.soft_label_kd_loss(s, tt, c, temp), ref, rtol=1e-4)


def test_rkd():
    s, t = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))

    def huber(x):
        return np.where(np.abs(x) < 1, 0.5 * x * x, np.abs(x) - 0.5)

    def dist(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return d / d[~np.eye(4, dtype=bool)].mean()

    off = ~np.eye(4, dtype=bool)
    l_d = huber(dist(s) - dist(t))[off].mean()

    def ang(x):
        out = np.zeros((4, 4, 4))
        for j in range(4):
            for i in range(4):
                for k in range(4):
                    a, b = x[i] - x[j], x[k] - x[j]
                    na, nb = np.linalg.norm(a), np.linalg.norm(b)
                    out[j, i, k] = (a / na) @ (b / nb) if na > 0 and nb > 0 else 0
        return out

    l_a = huber(ang(s) - ang(t)).mean()
    np.testing.assert_allclose(kd.rkd_loss(s, t, 1.0, 2.0), l_d + 2 * l_a, rtol=1e-4)


def _et_reference(a, ya, t, yt, sk, ys, c, m_x, m_s, mu, nu, offset):
    out = []
    for i in range(len(a)):
        d = cosd(a[i : i + 1], t)[0]
        pos, neg = d[yt == ya[i]], d[yt != ya[i]]
        loss = max(0, m_x + pos.max() - neg.min()) if len(pos) and len(neg) else 0.0
        ds = cosd(a[i : i + 1], sk)[0]
        same = (ys == ya[i]) & (np.arange(len(sk)) != offset + i)
        if same.any() and (ys != ya[i]).any():
            loss += mu * max(0, m_s + ds[same].max() - ds[ys != ya[i]].min())
        loss += nu * cosd(a[i : i + 1], c[ya[i] : ya[i] + 1])[0, 0]
        out.append(loss)
    return np.array(out)


def _et_inputs(g=16, e=6, classes=4):
    sk, ys = RNG.normal(size=(g, e)), RNG.integers(0, classes, g)
    t, c = RNG.normal(size=(g, e)), RNG.normal(size=(classes, e))
    return sk, ys, t, ys.copy(), c


def test_enhanced_triplet_matches_reference_and_slices():
    sk, ys, t, yt, c = _et_inputs()
    kw = dict(m_x=0.2, m_s=0.3, mu=0.5, nu=0.1)
    full = triplet.enhanced_triplet_loss(sk, ys, t, yt, sk, ys, c, **kw, anchor_offset=0)
    np.testing.assert_allclose(
        full, _et_reference(sk, ys, t, yt, sk, ys, c, **kw, offset=0), rtol=1e-4
    )
    # 8 slices of 2 anchors against the global batch average to the global mean
    parts = [
        triplet.enhanced_triplet_loss(
            sk[i : i + 2], ys[i : i + 2], t, yt, sk, ys, c, **kw, anchor_offset=i
        )
        for i in range(0, 16, 2)
    ]
    np.testing.assert_allclose(np.mean([p.mean() for p in parts]), full.mean(), rtol=1e-5)
    plain = triplet.enhanced_triplet_loss(sk, ys, t, yt, sk, ys, c, m_x=0.2, mu=0.0, nu=0.0)
    np.testing.assert_allclose(
        plain, _et_reference(sk, ys, t, yt, sk, ys, c, 0.2, 0, 0, 0, 0), rtol=1e-4
    )
    lone = triplet.enhanced_triplet_loss(
        sk[:1], np.array([9]), t, yt, sk, ys, c[:1].repeat(10, 0), mu=0.5, nu=0.0
    )
    np.testing.assert_array_equal(lone, 0.0)  # no positive in the batch: masked, not NaN


def test_enhanced_triplet_under_pmap_equals_single_device():
    chex.assert_equal(jax.local_device_count(), 8)
    sk, ys, t, yt, c = _et_inputs()
    kw = dict(m_x=0.2, m_s=0.3, mu=0.5, nu=0.1)

    def per_device(s, y, tt, yy):
        g = lambda x: jax.lax.all_gather(x, "data", tiled=True)
        off = jax.lax.axis_index("data") * s.shape[0]
        loss = triplet.enhanced_triplet_loss(
            s, y, g(tt), g(yy), g(s), g(y), c, **kw, anchor_offset=off
        )
        return jax.lax.pmean(loss.mean(), "data")

    r = lambda x: x.reshape((8, 2) + x.shape[1:])
    out = jax.pmap(per_device, axis_name="data")(r(sk), r(ys), r(t), r(yt))
    single = triplet.enhanced_triplet_loss(sk, ys, t, yt, sk, ys, c, **kw).mean()
    np.testing.assert_allclose(out, single, rtol=1e-5)


def test_baselines_against_references():
    a, b, same = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3)), np.array([1, 0, 1, 0], bool)
    d = np.linalg.norm(a - b, axis=1)
    ref = np.where(same, d**2 / 0.2, 10 * np.exp(-2.77 / 10 * d))
    np.testing.assert_allclose(baselines.siamese_pair_loss(a, b, same), ref, rtol=1e-5)
    np.testing.assert_allclose(
        baselines.siamese_loss(a, a, b, b, same, same, same),
        baselines.siamese_pair_loss(a, a, same)
        + baselines.siamese_pair_loss(b, b, same)
        + baselines.siamese_pair_loss(a, b, same),
        rtol=1e-5,
    )
    f, y, c = RNG.normal(size=(5, 3)), np.array([0, 1, 2, 0, 1]), RNG.normal(size=(3, 3))
    dd = 0.5 * ((f[:, None] - c[None]) ** 2).sum(-1)
    ref = [
        max(0, dd[i, y[i]] + 1.0 - min(dd[i, j] for j in range(3) if j != y[i])) for i in range(5)
    ]
    np.testing.assert_allclose(baselines.triplet_centre_loss(f, y, c, 1.0), ref, rtol=1e-5)
    p, nv, ns = (RNG.normal(size=(5, 3)) for _ in range(3))
    dist = lambda u, v: np.linalg.norm(u - v, axis=1)
    ref = np.maximum(0, 0.2 + dist(f, p) - dist(f, nv)) + np.maximum(
        0, 0.2 + dist(f, p) - dist(f, ns)
    )
    np.testing.assert_allclose(baselines.quadruplet_loss(f, p, nv, ns, 0.2), ref, rtol=1e-5)
    dm = np.linalg.norm(f[:, None] - f[None], axis=-1)
    ref = []
    for i in range(5):
        pos = [dm[i, j] for j in range(5) if y[j] == y[i] and j != i]
        neg = [dm[i, j] for j in range(5) if y[j] != y[i]]
        ref.append(max(0, 0.5 + max(pos) - min(neg)) if pos else 0.0)
    np.testing.assert_allclose(baselines.iaml_loss(f, y, 0.5), ref, rtol=1e-4)
    z2, y2 = RNG.normal(size=(4, 3)), np.array([0, 0, 2, 2])
    ref = sum(np.linalg.norm(f[y == k].mean(0) - z2[y2 == k].mean(0)) for k in (0, 2))
    np.testing.assert_allclose(baselines.class_mean_discrepancy(f, y, z2, y2, 3), ref, rtol=1e-5)


def test_dcml_and_lwbr_against_references():
    s, t, y = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3)), np.array([0, 1, 0, 1])
    off = ~np.eye(4, dtype=bool)
    d2 = lambda u, v: ((u[:, None] - v[None]) ** 2).sum(-1)
    same = y[:, None] == y[None]
    con = lambda dd, m: np.where(same, dd, np.maximum(0, 1.0 - dd))[m].mean()
    l_d = con(d2(s, s), off) + con(d2(t, t), off)
    l_c = con(d2(s, t), np.ones((4, 4), bool))
    l_2c = ((np.sqrt(d2(s, s)) - np.sqrt(d2(t, t))) ** 2)[off].mean()
    np.testing.assert_allclose(
        baselines.dcml_loss(s, y, t, y, 0.3, 1.0), 0.3 * l_d + 0.7 * (l_c + l_2c), rtol=1e-4
    )
    ref = np.where(same, d2(s, t), np.maximum(0, 1.0 - d2(s, t))).mean()
    np.testing.assert_allclose(baselines.lwbr_loss(s, y, t, y, 1.0), ref, rtol=1e-5)


def test_sinkhorn_barycentre_of_identical_histograms_is_close_to_them():
    h = np.array([0.1, 0.2, 0.4, 0.2, 0.1])
    grid = np.linspace(0, 1, 5)
    bary = baselines.sinkhorn_barycentre(
        jnp.asarray(np.stack([h, h])), (grid[:, None] - grid[None]) ** 2, eps=0.01, iters=200
    )
    np.testing.assert_allclose(bary.sum(), 1.0, rtol=1e-3)
    np.testing.assert_allclose(bary, h, atol=0.05)


def test_soft_targets_and_registry():
    logits, probs = RNG.normal(size=(3, 4)), unit(np.abs(RNG.normal(size=(3, 4))) + 0.1) ** 2
    probs = probs / probs.sum(1, keepdims=True)
    lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(
        baselines.soft_target_kl(logits, probs), (probs * (np.log(probs) - lp)).sum(1), rtol=1e-5
    )
    assert get_objective("enhanced_triplet") is triplet.enhanced_triplet_loss
    with pytest.raises(ValueError, match="unknown"):
        get_objective("nope")
