"""Model FLOPs of a step, counted from its jaxpr: the same number on every backend.

XLA's cost analysis depends on the backend (on the GPU it came back empty, so no MFU could be
computed; on CPU the oneDNN custom calls carry no cost). This module traces the step instead
and counts its convolutions and matrix products with XLA's own formulas
(`HloCostAnalysis::GetConvolutionFlops` and `HandleDot`): 2 FLOPs per multiply-add, and for a
convolution only the kernel taps that land inside the (padded, dilated) input, as XLA counts
them. Elementwise work (normalisation, activations, the optimiser) is left out, as MFU
conventionally does; `tests/test_flops.py` checks every counted operation against XLA's CPU
cost analysis of it, and the total against XLA's count of the whole teacher step.

    from benchmarks.flops import step_flops
    flops = step_flops(step_fn, state, batch, rng, consts)  # per device, per step
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jcore
import numpy as np


def conv_flops(lhs_shape, rhs_shape, out_shape, params: dict) -> int:
    """FLOPs of one `conv_general_dilated`, as XLA's cost analysis counts them.

    Args:
      lhs_shape, rhs_shape, out_shape: the operand and result shapes.
      params: the primitive's parameters (window_strides, padding, lhs_dilation,
        rhs_dilation, dimension_numbers, feature_group_count, batch_group_count).

    Returns:
      2 x the multiply-adds whose input tap lies inside the input (not in padding or in the
      holes of an input dilation).
    """
    dn = params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    batch, in_feat = lhs_shape[lhs_spec[0]], lhs_shape[lhs_spec[1]]
    out_feat = out_shape[out_spec[1]]
    nsp = len(lhs_spec) - 2
    strides = params.get("window_strides") or (1,) * nsp
    lhs_dil = params.get("lhs_dilation") or (1,) * nsp
    rhs_dil = params.get("rhs_dilation") or (1,) * nsp
    valid = 1
    for i in range(nsp):
        n_in, n_k = lhs_shape[lhs_spec[2 + i]], rhs_shape[rhs_spec[2 + i]]
        n_out, lo = out_shape[out_spec[2 + i]], params["padding"][i][0]
        k = np.arange(n_k)[:, None]
        o = np.arange(n_out)[None, :]
        undilated = o * strides[i] - lo + k * rhs_dil[i]  # [kernel, output]
        idx = undilated // lhs_dil[i]
        ok = (undilated == idx * lhs_dil[i]) & (idx >= 0) & (idx < n_in)
        valid *= int(ok.sum())
    fgc, bgc = params.get("feature_group_count", 1), params.get("batch_group_count", 1)
    return 2 * (in_feat // fgc) * out_feat * (batch // bgc) * valid


def dot_flops(lhs_shape, out_shape, params: dict) -> int:
    """FLOPs of one `dot_general`: 2 x output elements x contraction size (XLA's count)."""
    (lhs_contract, _), _ = params["dimension_numbers"]
    width = int(np.prod([lhs_shape[d] for d in lhs_contract], dtype=np.int64))
    return 2 * int(np.prod(out_shape, dtype=np.int64)) * width


def _sub_jaxprs(params: dict):
    """The jaxprs nested in an equation's parameters (pjit, remat, custom_jvp/vjp, cond...)."""
    for v in params.values():
        for x in v if isinstance(v, (list, tuple)) else (v,):
            if isinstance(x, jcore.ClosedJaxpr):
                yield x.jaxpr
            elif isinstance(x, jcore.Jaxpr):
                yield x


def jaxpr_flops(jaxpr, by_op: dict[str, int] | None = None) -> int:
    """Convolution and matrix-product FLOPs of a jaxpr, nested ones included.

    Args:
      jaxpr: a `Jaxpr` (or `ClosedJaxpr`).
      by_op: optional dict that receives the FLOPs per primitive name.

    Returns:
      FLOPs; a `scan` body counts `length` times, a `cond` its costliest branch, a `while`
      body once (its trip count is not static).
    """
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        shapes = [getattr(v.aval, "shape", ()) for v in eqn.invars]
        if name == "conv_general_dilated":
            f = conv_flops(shapes[0], shapes[1], eqn.outvars[0].aval.shape, eqn.params)
        elif name == "dot_general":
            f = dot_flops(shapes[0], eqn.outvars[0].aval.shape, eqn.params)
        elif name == "cond":
            f = max(jaxpr_flops(b, by_op) for b in eqn.params["branches"])
        else:
            f = sum(jaxpr_flops(j, by_op) for j in _sub_jaxprs(eqn.params))
            f *= int(eqn.params.get("length", 1)) if name == "scan" else 1
            total += f
            continue
        if by_op is not None and name != "cond":
            by_op[name] = by_op.get(name, 0) + f
        total += f
    return total


def step_flops(step: Callable, *args: Any, axis_name: str = "data", axis_size: int = 1) -> int:
    """Model FLOPs of one call of a per-device step (convolutions and matrix products).

    Args:
      step: the per-device step `(state, batch, rng, consts) -> ...` (before pmap/shard_map),
        or any function of `args`.
      *args: its arguments for ONE device (arrays or `jax.ShapeDtypeStruct`s).
      axis_name, axis_size: the data-parallel axis the step's collectives name.

    Returns:
      FLOPs per device and step; traced only (nothing is compiled or run), so it is the same
      on every backend.
    """
    closed = jax.make_jaxpr(step, axis_env=[(axis_name, axis_size)])(*args)
    return jaxpr_flops(dce(closed.jaxpr))


def dce(jaxpr):
    """`jaxpr` without the equations its outputs do not need (as JAX drops them when it
    lowers: e.g. the forward convolution of a gradient nobody reads)."""
    from jax._src.interpreters import partial_eval as pe

    return pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))[0]
