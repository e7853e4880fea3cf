import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sb3dr_jax.models import build_model, feature_dim, init_student_from_teacher
from sb3dr_jax.train.augment import augment_sketches, augment_views, bcl_strength


@pytest.mark.parametrize("pooling", ["max", "mean", "attention"])
def test_teacher_outputs(pooling):
    m = build_model(
        "ssl_teacher",
        backbone="resnet_tiny",
        num_filters=8,
        pooling=pooling,
        proj_dim=16,
        proj_hidden=32,
        pred_hidden=32,
        per_view=True,
    )
    x = jnp.zeros((2, 5, 32, 32, 3), jnp.uint8)
    params = m.init(jax.random.key(0), x)
    emb, aux = m.apply(params, x)
    chex.assert_shape(emb, (2, feature_dim(backbone="resnet_tiny", num_filters=8)))
    chex.assert_shape([aux["projection"], aux["prediction"]], (2, 16))
    chex.assert_shape(aux["view_prediction"], (2, 5, 16))
    emb2, _ = m.apply(params, x, method="embed")
    np.testing.assert_allclose(emb, emb2, rtol=1e-5)


def test_views_are_permutation_invariant_and_bf16_runs():
    m = build_model("ssl_teacher", backbone="resnet_tiny", num_filters=8, dtype="bfloat16")
    x = jax.random.randint(jax.random.key(1), (1, 4, 32, 32, 3), 0, 255).astype(jnp.uint8)
    params = m.init(jax.random.key(0), x)
    assert jax.tree_util.tree_leaves(params)[0].dtype == jnp.float32  # params stay f32
    a, _ = m.apply(params, x, method="embed")
    b, _ = m.apply(params, x[:, ::-1], method="embed")
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2)


def test_batchnorm_averages_over_the_data_axis():
    m = build_model(
        "sketch_student",
        backbone="resnet_tiny",
        num_filters=8,
        norm="batch",
        embed_dim=4,
        axis_name="data",
    )
    x = jax.random.uniform(jax.random.key(0), (8, 2, 16, 16, 1))
    v = m.init(jax.random.key(0), x[0], train=False)

    def f(xx):
        _, upd = m.apply(v, xx, train=True, mutable=["batch_stats"])
        return upd["batch_stats"]

    stats = jax.pmap(f, axis_name="data")(x)
    leaf = jax.tree_util.tree_leaves(stats)[0]
    np.testing.assert_allclose(leaf[0], leaf[7], rtol=1e-5)  # identical on every device


def test_student_init_from_teacher():
    t = build_model("ssl_teacher", backbone="resnet_tiny", num_filters=8)
    s = build_model("sketch_student", backbone="resnet_tiny", num_filters=8, embed_dim=64)
    tp = t.init(jax.random.key(0), jnp.zeros((1, 2, 32, 32, 3)))["params"]
    sp = s.init(jax.random.key(1), jnp.zeros((1, 32, 32, 1)))["params"]
    out = init_student_from_teacher(sp, tp, line_channel=2)
    np.testing.assert_array_equal(
        out["backbone"]["stem"]["kernel"][..., 0, :],
        tp["encoder"]["backbone"]["stem"]["kernel"][..., 2, :],
    )
    k = "BasicBlock_0"
    np.testing.assert_array_equal(
        out["backbone"][k]["Conv_0"]["kernel"], tp["encoder"]["backbone"][k]["Conv_0"]["kernel"]
    )
    np.testing.assert_array_equal(out["head"]["Dense_0"]["kernel"], sp["head"]["Dense_0"]["kernel"])


def test_augmentations():
    x = jnp.zeros((3, 2, 32, 32, 1)).at[:, :, 8:24, 8:24].set(1.0)
    a = augment_views(jax.random.key(0), x, jnp.array([0.0, 0.5, 1.0]))
    chex.assert_shape(a, x.shape)
    np.testing.assert_array_equal(
        a, augment_views(jax.random.key(0), x, jnp.array([0.0, 0.5, 1.0]))
    )
    assert not np.allclose(a, augment_views(jax.random.key(1), x, jnp.array([0.0, 0.5, 1.0])))
    mass = a.sum(axis=(2, 3, 4)) / x.sum(axis=(2, 3, 4))
    assert float(mass.min()) > 0.7  # content is zoomed/rotated, not lost
    many = jnp.repeat(x[:1], 64, axis=0)  # one shape, 64 draws per strength
    weak = augment_views(jax.random.key(3), many, jnp.zeros(64))
    strong = augment_views(jax.random.key(3), many, jnp.ones(64))
    change = lambda y: float(jnp.abs(y - many).mean())
    assert change(strong) > change(weak)  # stronger = more change
    sk = augment_sketches(jax.random.key(0), x[:, 0])
    chex.assert_shape(sk, x[:, 0].shape)
    w = jnp.array([0.0, 1.0] * 500)
    st = bcl_strength(jax.random.key(0), w, 1.0)
    assert float(st[::2].max()) == 0.0 and 0.4 < float(st[1::2].mean()) < 0.6
