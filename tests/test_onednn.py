"""oneDNN convolutions (sb3dr_jax/kernels): values and gradients against XLA's, fallbacks,
model-level equality, devices, and the config switch."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sb3dr_jax.kernels import onednn
from sb3dr_jax.models import build_model
from sb3dr_jax.models.resnet import resolve_conv_impl

DN = ("NHWC", "HWIO", "NHWC")

if not onednn.available():
    reason = f"oneDNN kernels unavailable: {onednn.unavailable_reason()}"
    if os.environ.get("SB3DR_REQUIRE_ONEDNN"):  # CI installs them: a skip there is a failure
        raise RuntimeError(reason)
    pytest.skip(reason, allow_module_level=True)


def _conv_pair(x_shape, w_shape, strides, padding, seed=0):
    """(XLA result, oneDNN result) of output, dx and dw for one random convolution."""
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(seed), 3)
    x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)

    def outs(conv):
        f = lambda x, w: conv(x, w, strides, padding, dimension_numbers=DN)
        y, vjp = jax.vjp(f, x, w)
        g = jax.random.normal(kg, y.shape)  # [N, OH, OW, O]
        return (y, *vjp(g))

    return jax.jit(lambda: outs(lax.conv_general_dilated))(), jax.jit(
        lambda: outs(onednn.conv_general_dilated)
    )()


GEOMETRIES = [
    pytest.param(*g)
    for g in [
        ((4, 16, 16, 8), (3, 3, 8, 8), (1, 1), "SAME"),
        ((4, 17, 17, 8), (3, 3, 8, 16), (2, 2), "SAME"),  # odd size, asymmetric SAME padding
        ((3, 16, 16, 8), (1, 1, 8, 16), (2, 2), "SAME"),  # strided 1x1 shortcut
        ((2, 32, 32, 3), (7, 7, 3, 8), (2, 2), [(3, 3), (3, 3)]),  # ImageNet stem
        ((2, 12, 10, 5), (3, 2, 5, 7), (1, 2), "VALID"),  # non-square everything
        ((1, 8, 8, 1), (3, 3, 1, 4), (1, 1), [(2, 0), (0, 1)]),  # one-channel sketch, odd pads
    ]
]


@pytest.mark.parametrize("x_shape,w_shape,strides,padding", GEOMETRIES)
def test_matches_xla_values_and_gradients(x_shape, w_shape, strides, padding):
    ref, got = _conv_pair(x_shape, w_shape, strides, padding)
    for name, r, g in zip(("y", "dx", "dw"), ref, got):
        chex.assert_equal_shape([r, g])
        np.testing.assert_allclose(
            g, r, rtol=1e-4, atol=1e-4 * float(jnp.abs(r).max()), err_msg=name
        )


def test_uses_custom_calls_and_falls_back_to_xla_otherwise():
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    hlo = lambda f, *a: jax.jit(f).lower(*a).as_text()
    plain = lambda x, w: onednn.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)
    assert "Sb3drConvFwd" in hlo(plain, x, w)
    grad_hlo = hlo(jax.grad(lambda x, w: plain(x, w).sum(), argnums=(0, 1)), x, w)
    assert "Sb3drConvBwdData" in grad_hlo and "Sb3drConvBwdWeights" in grad_hlo
    # Dilation, groups, bf16 and NCHW are not handled by the kernels: XLA runs them, same maths.
    cases = [
        (x, w, dict(rhs_dilation=(2, 2))),
        (x, jnp.ones((3, 3, 2, 4)), dict(feature_group_count=2)),
        (x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), {}),
    ]
    for a, b, kw in cases:
        f = lambda a, b: onednn.conv_general_dilated(
            a, b, (1, 1), "SAME", dimension_numbers=DN, **kw
        )
        assert "Sb3drConv" not in hlo(f, a, b)
        ref = lax.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=DN, **kw)
        np.testing.assert_allclose(np.asarray(f(a, b), np.float32), np.asarray(ref, np.float32))
    nchw = ("NCHW", "OIHW", "NCHW")
    xc, wc = jnp.ones((2, 4, 8, 8)), jnp.ones((4, 4, 3, 3))
    f = lambda a, b: onednn.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=nchw)
    assert "Sb3drConv" not in hlo(f, xc, wc)


def test_concurrent_independent_convolutions():
    # XLA runs independent custom calls at once on its threads; each brings its own scratchpad
    # (a shared one corrupted results and hung the teacher step).
    xs = jax.random.normal(jax.random.PRNGKey(0), (8, 4, 16, 16, 8))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 8, 8))

    def many(conv):  # 8 independent forward + backward chains, like the view chunks
        loss = lambda x, w: jnp.sum(conv(x, w, (1, 1), "SAME", dimension_numbers=DN) ** 2)
        return [jax.grad(loss, argnums=(0, 1))(x, w) for x in xs]

    ref = jax.jit(lambda: many(lax.conv_general_dilated))()
    run = jax.jit(lambda: many(onednn.conv_general_dilated))
    # Asynchronous calls (on XLA's pool, the default) and inline ones give the same results.
    default = os.environ.get("SB3DR_ONEDNN_ASYNC", "1") != "0"
    assert onednn.set_async(True) == default
    try:
        for asynchronous in (True, False):
            onednn.set_async(asynchronous)
            chex.assert_trees_all_close(run(), ref, rtol=1e-4, atol=1e-3)
    finally:
        onednn.set_async(default)


def _teacher(impl):
    kw = dict(backbone="resnet_tiny", num_filters=8, proj_dim=16, proj_hidden=32, pred_hidden=32)
    return build_model("ssl_teacher", **kw, view_chunk=4, conv_impl=impl)


def test_teacher_same_embedding_and_gradient_with_either_kernels():
    xla, dnnl = _teacher("xla"), _teacher("onednn")
    views = jax.random.uniform(jax.random.PRNGKey(1), (2, 4, 48, 48, 3))  # strided stem
    params = xla.init(jax.random.PRNGKey(0), views)["params"]
    f = lambda m: lambda p: m.apply({"params": p}, views)[1]["prediction"]
    np.testing.assert_allclose(f(dnnl)(params), f(xla)(params), rtol=1e-4, atol=1e-5)
    g = lambda m: jax.jit(jax.grad(lambda p: jnp.sum(f(m)(p) ** 2)))(params)
    chex.assert_trees_all_close(g(dnnl), g(xla), rtol=1e-3, atol=1e-5)


def test_student_under_pmap_on_eight_devices():
    n = jax.local_device_count()
    kw = dict(backbone="resnet_tiny", num_filters=8, embed_dim=16, hidden=0, chunk=2)
    xla, dnnl = (build_model("sketch_student", **kw, conv_impl=i) for i in ("xla", "onednn"))
    images = jax.random.uniform(jax.random.PRNGKey(2), (n, 3, 32, 32, 1))  # [D, B, S, S, 1]
    params = xla.init(jax.random.PRNGKey(0), images[0])["params"]
    run = lambda m: jax.pmap(lambda x: m.apply({"params": params}, x)[0])(images)
    np.testing.assert_allclose(run(dnnl), run(xla), rtol=1e-4, atol=1e-5)


def test_resolve_conv_impl():
    assert resolve_conv_impl("xla") == "xla"
    assert resolve_conv_impl("onednn") == "onednn"
    assert resolve_conv_impl("auto") == "onednn"  # CPU backend, kernels built
    with pytest.raises(ValueError, match="model.conv_impl"):
        resolve_conv_impl("mkl")
    with pytest.raises(ValueError, match="model.conv_impl"):
        build_model("ssl_teacher", conv_impl="cudnn")


def test_impl_info_names_a_jit_kernel():
    # A reference kernel would be correct but ~100x slower: the benchmarks rely on JIT ones.
    for op in ("fwd", "bwd_data", "bwd_w"):
        info = onednn.impl_info(op, (16, 32, 32, 16), (3, 3, 16, 16))
        assert "ref" not in info and info, (op, info)


def test_threads_per_call_follow_the_size_of_the_call():
    # Small calls run one thread each (XLA runs independent ones side by side), big ones on
    # every core; resnet_tiny's biggest 16-view call is 38M multiply-adds, ResNet-18's 604M.
    if os.environ.get("SB3DR_ONEDNN_THREADS") or os.environ.get("SB3DR_ONEDNN_PARALLEL_MACS"):
        pytest.skip("the thread policy is overridden in this environment")
    cores = int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
    for op in ("fwd", "bwd_data", "bwd_w"):
        assert onednn.threads_for(op, (16, 32, 32, 16), (3, 3, 16, 16)) == 1
        assert onednn.threads_for(op, (16, 32, 32, 64), (3, 3, 64, 64)) == cores
    # oneDNN 3.2's strided 1x1 weight gradient corrupts the heap on 2 threads: always one.
    assert onednn.threads_for("bwd_w", (64, 32, 32, 64), (1, 1, 64, 128), (2, 2)) == 1


_MULTI_THREAD_CHECK = """
import numpy as np
import test_onednn as t
from sb3dr_jax.kernels import onednn
assert onednn.threads_for("bwd_w", (4, 17, 17, 8), (3, 3, 8, 16), (2, 2)) == 2
geoms = [p.values for p in t.GEOMETRIES] + [((1, 16, 16, 8), (1, 1, 8, 16), (2, 2), "SAME")]
for _ in range(2):  # the strided 1x1 weight gradient corrupted the heap at once
    for geom in geoms:
        t.test_matches_xla_values_and_gradients(*geom)
t.test_concurrent_independent_convolutions()  # several multi-threaded calls at once
print("ok")
"""


def test_multi_threaded_calls_match_xla_and_run_concurrently():
    # Every call on 2 OpenMP threads (the big-call path), in a fresh process: the policy is read
    # once per process. Values, gradients and concurrent chains as in the tests above.
    env = dict(os.environ, SB3DR_ONEDNN_PARALLEL_MACS="1", OMP_NUM_THREADS="2")
    env.pop("SB3DR_ONEDNN_THREADS", None)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", _MULTI_THREAD_CHECK],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
