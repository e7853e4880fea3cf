import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sb3dr_jax.models import (
    MLP,
    PRESETS,
    ViewPooling,
    build_model,
    feature_dim,
    init_student_from_teacher,
    resnet,
)
from sb3dr_jax.models.common import normalize_uint8


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


def test_normalize_uint8():
    x = jnp.array([0, 51, 255], jnp.uint8)
    out = normalize_uint8(x)
    chex.assert_type(out, jnp.float32)
    np.testing.assert_allclose(out, [0.0, 0.2, 1.0], rtol=1e-6)
    chex.assert_type(normalize_uint8(x, jnp.bfloat16), jnp.bfloat16)
    f = jnp.array([0.5], jnp.float32)
    np.testing.assert_array_equal(normalize_uint8(f), f)  # floats are not rescaled


@pytest.mark.parametrize(
    "preset,feat", [("resnet_tiny", 128), ("resnet18", 512), ("resnet50", 2048)]
)
def test_presets_feature_dims(preset, feat):
    bb = resnet(preset)
    assert bb.feature_dim == feat == feature_dim(backbone=preset)
    # Shapes only (no compute): the big presets stay cheap on CPU.
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    out = jax.eval_shape(lambda a: bb.init_with_output(jax.random.key(0), a)[0], x)
    assert out.shape == (2, feat) and out.dtype == jnp.float32
    assert set(PRESETS) >= {"resnet_tiny", "resnet18", "resnet50"}


def test_narrow_widths_and_large_inputs_run():
    # 12 filters: GroupNorm falls back to a divisor of the channel count (6 groups).
    bb = resnet("resnet_tiny", num_filters=12)
    x = jax.random.uniform(jax.random.key(0), (2, 96, 96, 1))  # ImageNet stem from 96 px
    out, _ = bb.init_with_output(jax.random.key(1), x)
    chex.assert_shape(out, (2, bb.feature_dim))
    chex.assert_tree_all_finite(out)


def test_bad_config_raises_naming_the_field():
    with pytest.raises(ValueError, match="model.norm"):
        build_model("sketch_student", norm="instance", embed_dim=4)
    with pytest.raises(ValueError, match="model.backbone"):
        build_model("ssl_teacher", backbone="vgg")
    with pytest.raises(ValueError, match="model.dtype"):
        build_model("ssl_teacher", dtype="fp8")
    with pytest.raises(ValueError, match="model.pooling"):
        build_model("ssl_teacher", pooling="sum")
    with pytest.raises(ValueError, match="model.embed_dim"):
        build_model("sketch_student")
    with pytest.raises(ValueError, match="unknown config keys.*'poolng'"):
        build_model("ssl_teacher", poolng="mean")
    with pytest.raises(ValueError, match="model name"):
        build_model("teacher")
    with pytest.raises(ValueError, match="model.head_norm"):
        m = build_model("sketch_student", embed_dim=4, num_filters=8, head_norm="rms")
        m.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))


def test_config_round_trips_through_json():
    kw = dict(
        backbone="resnet_tiny", num_filters=8, norm="group", dtype="float32", embed_dim=6, hidden=0
    )
    m1 = build_model("sketch_student", **kw)
    m2 = build_model("sketch_student", **json.loads(json.dumps(kw)))
    x = jnp.zeros((2, 16, 16, 1), jnp.uint8)
    p = m1.init(jax.random.key(0), x)
    a, aux = m1.apply(p, x)
    b, _ = m2.apply(p, x)  # the rebuilt model accepts the saved params
    np.testing.assert_array_equal(a, b)
    chex.assert_shape(a, (2, 6))
    chex.assert_shape(aux["features"], (2, feature_dim(**kw)))
    assert set(p["params"]["head"]) == {"kernel", "bias"}  # hidden=0: one linear layer


def test_view_pooling_modes():
    f = jax.random.normal(jax.random.key(0), (2, 5, 8))  # [B, V, F]
    perm = jnp.array([3, 0, 4, 1, 2])
    for kind, ref in [("max", f.max(1)), ("mean", f.mean(1))]:
        out, _ = ViewPooling(kind).init_with_output(jax.random.key(0), f)
        np.testing.assert_allclose(out, ref, rtol=1e-6)
    pool = ViewPooling("attention")
    v = pool.init(jax.random.key(1), f)
    out = pool.apply(v, f)
    chex.assert_shape(out, (2, 8))
    np.testing.assert_allclose(pool.apply(v, f[:, perm]), out, rtol=1e-5, atol=1e-6)
    # A convex combination of the views (softmax weights over V): within their range.
    assert bool(jnp.all(out <= f.max(1) + 1e-5)) and bool(jnp.all(out >= f.min(1) - 1e-5))
    assert not np.allclose(out, f.mean(1))  # learned, non-uniform scores


def test_mlp_batchnorm_head_syncs_over_devices():
    mlp = MLP(hidden=6, out=3, norm="batch", axis_name="data")
    x = jax.random.normal(jax.random.key(0), (8, 4, 5))  # [D, b, D_in]
    v = mlp.init(jax.random.key(1), x[0], train=False)
    out, upd = jax.pmap(
        lambda xx: mlp.apply(v, xx, train=True, mutable=["batch_stats"]), axis_name="data"
    )(x)
    chex.assert_shape(out, (8, 4, 3))
    mean = upd["batch_stats"]["BatchNorm_0"]["mean"]
    np.testing.assert_allclose(mean[0], mean[5], rtol=1e-5)
    # Same as one device seeing the global batch.
    _, single = MLP(hidden=6, out=3, norm="batch").apply(
        {"params": v["params"], "batch_stats": v["batch_stats"]},
        x.reshape(32, 5),
        train=True,
        mutable=["batch_stats"],
    )
    np.testing.assert_allclose(mean[0], single["batch_stats"]["BatchNorm_0"]["mean"], rtol=1e-4)
    t = build_model("ssl_teacher", num_filters=8, head_norm="batch", proj_dim=4)
    vt = t.init(jax.random.key(0), jnp.zeros((2, 2, 16, 16, 1)), train=False)
    assert "batch_stats" in vt and "projector" in vt["batch_stats"]


def test_student_init_channel_sum_without_line_index():
    t = build_model("ssl_teacher", num_filters=8)
    s = build_model("sketch_student", num_filters=8, embed_dim=16)
    tp = t.init(jax.random.key(0), jnp.zeros((1, 2, 16, 16, 3)))["params"]
    sp = s.init(jax.random.key(1), jnp.zeros((1, 16, 16, 1)))["params"]
    out = init_student_from_teacher(sp, tp)
    np.testing.assert_allclose(
        out["backbone"]["stem"]["kernel"][..., 0, :],
        tp["encoder"]["backbone"]["stem"]["kernel"].sum(2),
        rtol=1e-6,
    )
    chex.assert_trees_all_equal_shapes(out, sp)
    # Every backbone leaf came from the teacher.
    flat_t = jax.tree_util.tree_leaves(tp["encoder"]["backbone"])
    flat_o = jax.tree_util.tree_leaves(out["backbone"])
    same = sum(bool(np.array_equal(a, b)) for a, b in zip(flat_t, flat_o, strict=True))
    assert same == len(flat_t) - 1  # all but the (channel-summed) stem
    with pytest.raises(ValueError, match="line_channel=3"):
        init_student_from_teacher(sp, tp, line_channel=3)
    with pytest.raises(ValueError, match="teacher_params"):
        init_student_from_teacher(sp, sp)


def _group_norm_ref(x, scale, bias, groups, eps=1e-6):
    """numpy GroupNorm: per example and group, statistics over (H, W, channels of the group)."""
    n, h, w, c = x.shape
    xg = x.reshape(n, h, w, groups, c // groups).astype(np.float64)
    mean = xg.mean((1, 2, 4), keepdims=True)
    var = xg.var((1, 2, 4), keepdims=True)
    return ((xg - mean) / np.sqrt(var + eps)).reshape(n, h, w, c) * scale + bias


def test_group_norm_matches_numpy_and_flax_values_and_gradients():
    import flax.linen as nn

    from sb3dr_jax.models.norm import GroupNorm

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(0.5, 2.0, (3, 5, 4, 12)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))  # a random cotangent
    ours, flax_gn = GroupNorm(4), nn.GroupNorm(4)
    params = flax_gn.init(jax.random.PRNGKey(0), x)
    params = jax.tree.map(lambda v: v + jnp.asarray(rng.normal(size=v.shape), jnp.float32), params)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x)) == jax.tree.map(
        jnp.shape, params
    )  # same parameter names and shapes: checkpoints interchange
    y = ours.apply(params, x)
    p = params["params"]
    ref = _group_norm_ref(np.asarray(x), np.asarray(p["scale"]), np.asarray(p["bias"]), 4)
    np.testing.assert_allclose(y, ref, atol=2e-5)
    loss = lambda m: lambda prm, xx: jnp.sum(m.apply(prm, xx) * w)
    g_ours = jax.grad(loss(ours), argnums=(0, 1))(params, x)
    g_flax = jax.grad(loss(flax_gn), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_flax)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # Forward-mode check of the hand-written backward against finite differences.
    jax.test_util.check_grads(
        lambda xx: ours.apply(params, xx), (x,), order=1, modes=["rev"], atol=2e-2, rtol=2e-2
    )
    # bf16 in, bf16 out; statistics stay float32 (a constant image normalises to the bias).
    yb = GroupNorm(4, dtype=jnp.bfloat16).apply(params, jnp.ones((1, 2, 2, 12), jnp.bfloat16))
    assert yb.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(yb, np.float32)[0, 0, 0], p["bias"], atol=1e-2)
    with pytest.raises(ValueError, match="divisible by 5"):
        GroupNorm(5).init(jax.random.PRNGKey(0), x)


def test_view_chunks_give_the_same_embedding_and_gradient():
    kw = dict(backbone="resnet_tiny", num_filters=8, proj_dim=16, proj_hidden=32, pred_hidden=32)
    whole, chunked = (
        build_model("ssl_teacher", **kw),
        build_model("ssl_teacher", **kw, view_chunk=4),
    )
    views = jax.random.uniform(jax.random.PRNGKey(1), (3, 5, 32, 32, 3))  # 15 views: 4+4+4+3
    params = whole.init(jax.random.PRNGKey(0), views)["params"]
    chex.assert_trees_all_equal_shapes(params, chunked.init(jax.random.PRNGKey(0), views)["params"])
    f = lambda m: lambda p: m.apply({"params": p}, views)[1]["prediction"]
    # jitted as the step runs it (op by op the comparison took a minute)
    pred_and_grad = lambda m: jax.jit(
        lambda p: (f(m)(p), jax.grad(lambda q: jnp.sum(f(m)(q) ** 2))(p))
    )(params)
    (pc, gc), (pw, gw) = pred_and_grad(chunked), pred_and_grad(whole)
    np.testing.assert_allclose(pc, pw, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(gc, gw, rtol=1e-4, atol=1e-6)


def test_s2d_stem_and_slice_pool_equal_the_conv_stem_and_reduce_window():
    # model.stem="s2d" / model.pool="slices" (the GPU config's): the same parameters, the same
    # outputs and (without ties) the same gradients as the 7x7 conv and nn.max_pool.
    import flax

    from sb3dr_jax.models.resnet import max_pool_3x3_s2, resnet

    x = jax.random.uniform(jax.random.key(0), (2, 96, 100, 3))
    base = resnet("resnet_tiny", num_filters=8)
    fast = resnet("resnet_tiny", num_filters=8, stem="s2d", pool="slices")
    params = base.init(jax.random.key(1), x)
    p_fast = fast.init(jax.random.key(1), x)
    chex.assert_trees_all_equal_shapes(params, p_fast)  # checkpoints interchangeable
    loss = lambda m: lambda p: jnp.sum(m.apply(p, x) ** 2)
    (a, ga), (b, gb) = (jax.value_and_grad(loss(m))(params) for m in (base, fast))
    np.testing.assert_allclose(b, a, rtol=1e-4)
    flat = lambda g: flax.traverse_util.flatten_dict(g)
    for k, v in flat(ga).items():
        np.testing.assert_allclose(flat(gb)[k], v, rtol=2e-3, atol=2e-5, err_msg=str(k))
    for shape in ((2, 64, 64, 5), (1, 33, 31, 2)):  # even and odd sides (SAME padding)
        y = jax.random.normal(jax.random.key(2), shape)
        ref = flax.linen.max_pool(y, (3, 3), (2, 2), padding="SAME")
        np.testing.assert_array_equal(max_pool_3x3_s2(y), ref)
        g = jax.grad(lambda y: jnp.sum(max_pool_3x3_s2(y) * ref))(y)
        g_ref = jax.grad(lambda y: jnp.sum(flax.linen.max_pool(y, (3, 3), (2, 2), "SAME") * ref))
        np.testing.assert_allclose(g, g_ref(y), rtol=1e-6)
    with pytest.raises(ValueError, match="model.stem"):
        resnet("resnet_tiny", stem="patchify")


def test_conv_module_is_chosen_in_one_place():
    """`model.conv_impl` picks the ResNet's `conv` module in `conv_module` alone; equal choices
    give the same object (equal modules), and an unknown name names the field."""
    import flax.linen as nn

    from sb3dr_jax.models.resnet import conv_module

    kw = dict(backbone="resnet_tiny", num_filters=8, embed_dim=4, conv_impl="xla")
    assert build_model("sketch_student", **kw).backbone.conv is nn.Conv
    assert conv_module("auto") is conv_module("auto")
    with pytest.raises(ValueError, match="model.conv_impl"):
        conv_module("cudnn")


def test_in_chunks_calls_per_chunk_and_matches_one_call():
    from sb3dr_jax.models.common import in_chunks

    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    y = np.arange(10, dtype=np.float32)
    sizes = []

    def fn(a, b):
        sizes.append(a.shape[0])
        return a * 2 + b[:, None]

    for chunk, calls in ((0, [10]), (3, [3, 3, 3, 1]), (10, [10]), (20, [10])):
        sizes.clear()
        np.testing.assert_array_equal(in_chunks(fn, chunk, x, y), x * 2 + y[:, None])
        assert sizes == calls, chunk
