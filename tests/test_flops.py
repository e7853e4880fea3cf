"""benchmarks/flops.py: the traced FLOP count equals XLA's CPU cost analysis, op by op and for
the teacher step."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import flops


def _xla_flops(fn, *args) -> float:
    """XLA's CPU cost analysis of `fn` lowered for `args` (nothing compiled)."""
    cost = jax.jit(fn).lower(*args).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def _ops(jaxpr, out):
    """Every conv_general_dilated / dot_general equation of a jaxpr, nested ones too."""
    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
            out.append(eqn)
        for sub in flops._sub_jaxprs(eqn.params):
            _ops(sub, out)
    return out


def _each_op_against_xla(jaxpr) -> tuple[int, float]:
    """(our count, XLA's CPU count) summed over the jaxpr's convolutions and matmuls, each
    lowered alone with its own shapes and parameters."""
    ours, xla, seen = 0, 0.0, {}
    for eqn in _ops(jaxpr, []):
        avals = [v.aval for v in eqn.invars]
        key = (eqn.primitive.name, str(avals), str(sorted(eqn.params.items(), key=str)))
        if key not in seen:
            fn = functools.partial(eqn.primitive.bind, **eqn.params)
            args = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]
            seen[key] = _xla_flops(fn, *args)
        xla += seen[key]
        ours += flops.jaxpr_flops(_single(eqn))
    return ours, xla


def _single(eqn):
    """A one-equation jaxpr holding `eqn` (so `jaxpr_flops` counts it through its own path)."""

    class J:  # the attributes jaxpr_flops reads
        eqns = [eqn]

    return J


@pytest.mark.parametrize(
    "stride,pad,lhs_dil,rhs_dil,groups",
    [(1, 1, 1, 1, 1), (2, 3, 1, 1, 1), (2, 0, 1, 2, 1), (1, 1, 2, 1, 1), (1, 1, 1, 1, 4)],
)
def test_conv_and_its_gradients_match_xla(stride, pad, lhs_dil, rhs_dil, groups):
    x = jnp.ones((3, 11, 9, 8), jnp.float32)
    w = jnp.ones((3, 3, 8 // groups, 12), jnp.float32)

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (stride, stride), [(pad, pad), (pad, pad)], (lhs_dil, lhs_dil),
            (rhs_dil, rhs_dil), ("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
        )  # fmt: skip

    y = conv(x, w)
    assert flops.step_flops(conv, x, w) == _xla_flops(conv, x, w)
    # Both gradients: XLA's transposed convolutions (input dilation, batch groups, flips).
    grads = lambda x, w, ct: jax.vjp(conv, x, w)[1](ct)
    ours, xla = _each_op_against_xla(jax.make_jaxpr(grads)(x, w, y))
    assert ours == xla > 0
    assert flops.step_flops(grads, x, w, y) == _xla_flops(grads, x, w, y)


def test_dot_matches_xla():
    a, b = jnp.ones((2, 5, 7)), jnp.ones((2, 7, 3))
    f = lambda a, b: jnp.einsum("bij,bjk->bik", a, b)
    assert flops.step_flops(f, a, b) == _xla_flops(f, a, b) == 2 * 2 * 5 * 3 * 7


def test_dead_convolutions_are_not_counted():
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=(
        "NHWC", "HWIO", "NHWC"))  # fmt: skip
    grad_x = lambda x, w: jax.grad(lambda x: conv(x, w).sum())(x)  # the forward is dead
    assert flops.step_flops(grad_x, x, w) == flops.step_flops(conv, x, w)


@pytest.fixture(scope="module")
def teacher_step():
    from benchmarks.accel import teacher_parts

    # The `ref` config (the PyTorch twin's) on XLA's convolutions, tiny.
    c, step, state, host = teacher_parts("ref", 2, 32, {}, quick=True)
    return step, (state, host, jax.random.key(0), {})


def test_teacher_step_matches_xla_cpu_count(teacher_step):
    step, args = teacher_step
    ours = flops.step_flops(step, *args)
    jaxpr = jax.make_jaxpr(step, axis_env=[("data", 1)])(*args)
    per_op_ours, per_op_xla = _each_op_against_xla(flops.dce(jaxpr.jaxpr))
    # Every convolution and matmul of the step counted exactly as XLA counts it.
    assert ours == per_op_ours == per_op_xla
    # The whole step as XLA's CPU cost analysis counts it: ours leaves out only elementwise
    # work (normalisation, activations, optimiser), a small part of it.
    pstep = jax.pmap(step, axis_name="data", in_axes=(0, 0, None, 0))
    lead = lambda t: jax.tree_util.tree_map(lambda x: np.asarray(x)[None], t)
    state, host, rng, consts = args
    whole = _xla_flops(pstep, lead(state), lead(host), rng, consts)
    assert 0.8 * whole < ours <= whole
