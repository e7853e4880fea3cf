"""oneDNN convolutions inside jitted JAX code on CPU (XLA FFI custom calls).

XLA:CPU runs convolutions on Eigen kernels that take 2.5-3x oneDNN's time on the view
encoders' small channel counts (benchmarks/README.md), and no XLA flag in this jaxlib routes
them to oneDNN. `conv_general_dilated` here is a drop-in for `lax.conv_general_dilated` (Flax's
`nn.Conv(conv_general_dilated=...)` hook): NHWC x HWIO f32 convolutions without dilation or
groups run as three oneDNN custom calls (forward, input gradient, weight gradient, joined by a
`custom_vjp`); anything else falls through to XLA.

The C++ side (`onednn_conv.cc`) is compiled on first use with the system C++ compiler (g++)
against the oneDNN wheel (a dependency on Linux x86-64) and cached under `$SB3DR_KERNEL_CACHE`
(default `~/.cache/sb3dr_jax`). `available()` says whether that worked, `unavailable_reason()`
why not. A small call runs on the one XLA thread that issues it (XLA already runs independent
convolutions side by side); a big one (`SB3DR_ONEDNN_PARALLEL_MACS`, default 1e8 multiply-adds)
on every core; `SB3DR_ONEDNN_THREADS` fixes the OpenMP threads of every call. Calls run
asynchronously on XLA's intra-op pool (`set_async`; `SB3DR_ONEDNN_ASYNC=0`: inline), so XLA's
executor starts the next ready op at once instead of running a few ready ones in turn.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn_conv.cc")
_TARGETS = {"fwd": "Sb3drConvFwd", "bwd_data": "Sb3drConvBwdData", "bwd_w": "Sb3drConvBwdWeights"}
_NHWC = lax.ConvDimensionNumbers(
    lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)
)


def _onednn_dirs() -> tuple[str, str] | None:
    """(install prefix, library dir) holding oneDNN's headers and libdnnl (the wheels' data scheme)."""
    for prefix in (sys.prefix, sysconfig.get_config_var("prefix") or "", "/usr"):
        if not os.path.exists(os.path.join(prefix, "include", "oneapi", "dnnl", "dnnl.hpp")):
            continue
        for d in ("lib", "lib/x86_64-linux-gnu"):
            if os.path.exists(os.path.join(prefix, d, "libdnnl.so")):
                return prefix, os.path.join(prefix, d)
    return None


def _build(prefix: str, libdir: str) -> str:
    """Compiles the kernels once per source/jaxlib/oneDNN combination; returns the .so path."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise RuntimeError("no C++ compiler (g++) on PATH: apt-get install g++")
    with open(_SRC, "rb") as f:
        digest = hashlib.sha256(f.read() + jax.__version__.encode() + prefix.encode()).hexdigest()
    cache = os.environ.get("SB3DR_KERNEL_CACHE") or os.path.expanduser("~/.cache/sb3dr_jax")
    os.makedirs(cache, exist_ok=True)
    out = os.path.join(cache, f"sb3dr_onednn_conv_{digest[:16]}.so")
    if os.path.exists(out):
        return out
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    cmd = [
        cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
        "-isystem", jax.ffi.include_dir(), "-isystem", os.path.join(prefix, "include"),
        _SRC, "-o", tmp, f"-L{libdir}", "-ldnnl", "-fopenmp", f"-Wl,-rpath,{libdir}",
    ]  # fmt: skip
    print(f"[kernels] building the oneDNN convolutions (first use, cached in {cache}) ...",
          file=sys.stderr, flush=True)  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        os.unlink(tmp)
        raise RuntimeError(f"compiling {_SRC} failed:\n{res.stderr[-2000:]}")
    os.replace(tmp, out)  # atomic: concurrent test workers never load a half-written file
    return out


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """Builds, loads and registers the kernels once per process: (library or None, reason)."""
    if sys.platform != "linux":
        return None, f"oneDNN kernels are built for Linux only (this is {sys.platform})"
    dirs = _onednn_dirs()
    if dirs is None:
        return None, "oneDNN not installed: pip install onednn-cpu-gomp onednn-devel-cpu-gomp"
    try:
        lib = ctypes.CDLL(_build(*dirs))
    except (OSError, RuntimeError) as e:
        return None, str(e)
    for target in _TARGETS.values():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, target)), platform="cpu")
    return lib, "ok"


def available() -> bool:
    """Whether the oneDNN convolutions can run here (see `unavailable_reason`)."""
    return _load()[0] is not None


def unavailable_reason() -> str:
    """Why `available()` is False ("ok" when it is True)."""
    return _load()[1]


def _geom(x_shape, w_shape, strides, padding) -> ctypes.Array:
    """The C++ side's 15-number geometry of one convolution."""
    pads = _pads(x_shape, w_shape, strides, padding)
    oh, ow = _out_hw(x_shape, w_shape, strides, pads)
    n, h, w, c = x_shape
    geom = [n, h, w, c, w_shape[0], w_shape[1], w_shape[3], oh, ow, *strides, *pads[0], *pads[1]]
    return (ctypes.c_int64 * 15)(*geom)


def impl_info(op: str, x_shape, w_shape, strides=(1, 1), padding="SAME") -> str:
    """The oneDNN kernel chosen for one op ('fwd', 'bwd_data', 'bwd_w'), e.g. 'brg:avx512_core'."""
    lib = _load()[0]
    if lib is None:
        return unavailable_reason()
    buf = ctypes.create_string_buffer(256)
    op_index = list(_TARGETS).index(op)  # C++ Op order
    lib.sb3dr_conv_impl_info(op_index, _geom(x_shape, w_shape, strides, padding), buf, 256)
    return buf.value.decode()


def threads_for(op: str, x_shape, w_shape, strides=(1, 1), padding="SAME") -> int:
    """OpenMP threads one op ('fwd', 'bwd_data', 'bwd_w') of this geometry runs on: 1 below
    `SB3DR_ONEDNN_PARALLEL_MACS` multiply-adds (default 1e8; XLA runs independent calls side by
    side), else every core; `SB3DR_ONEDNN_THREADS` fixes it (both read once per process); always
    1 for a strided 1x1 weight gradient (a oneDNN 3.2 bug). 0 when unavailable."""
    lib = _load()[0]
    if lib is None:
        return 0
    return lib.sb3dr_conv_threads(
        list(_TARGETS).index(op), _geom(x_shape, w_shape, strides, padding)
    )


def set_async(on: bool) -> bool:
    """Runs calls asynchronously on XLA's intra-op pool (True, the default; the environment's
    `SB3DR_ONEDNN_ASYNC=0` starts a process with False) or inline; returns the old setting.
    Takes effect for calls from then on, compiled programs included. False when unavailable."""
    lib = _load()[0]
    return bool(lib.sb3dr_conv_set_async(int(on))) if lib is not None else False


def _pads(x_shape, w_shape, strides, padding) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(x_shape[1:3], w_shape[:2], strides, padding)
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _out_hw(x_shape, w_shape, strides, pads) -> tuple[int, int]:
    return tuple(
        (x_shape[1 + i] + pads[i][0] + pads[i][1] - w_shape[i]) // strides[i] + 1 for i in (0, 1)
    )


def _call(target: str, out_shape, a, b, strides, pads):
    """One custom call; attributes are the strides and (lo, hi) padding per spatial dim."""
    if not available():
        raise RuntimeError(f"oneDNN convolutions unavailable: {unavailable_reason()}")
    (ph0, ph1), (pw0, pw1) = pads
    attrs = dict(sh=strides[0], sw=strides[1], ph0=ph0, ph1=ph1, pw0=pw0, pw1=pw1)
    fn = jax.ffi.ffi_call(
        _TARGETS[target], jax.ShapeDtypeStruct(out_shape, jnp.float32), vmap_method="sequential"
    )
    return fn(a, b, **{k: np.int64(v) for k, v in attrs.items()})


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, strides, pads):
    oh, ow = _out_hw(x.shape, w.shape, strides, pads)
    return _call("fwd", (x.shape[0], oh, ow, w.shape[3]), x, w, strides, pads)  # [N, OH, OW, O]


def _conv_fwd(x, w, strides, pads):
    return _conv(x, w, strides, pads), (x, w)


def _conv_bwd(strides, pads, res, dy):
    x, w = res
    dx = _call("bwd_data", x.shape, dy, w, strides, pads)  # [N, H, W, C]
    dw = _call("bwd_w", w.shape, x, dy, strides, pads)  # [KH, KW, C, O]
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(
    lhs: jnp.ndarray,
    rhs: jnp.ndarray,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
) -> jnp.ndarray:
    """`lax.conv_general_dilated` with oneDNN kernels for the cases the encoders use.

    Args:
      lhs: [N, H, W, C] input (NHWC, as Flax passes it).
      rhs: [KH, KW, C, O] kernel (HWIO).
      window_strides, padding, ...: as in `lax.conv_general_dilated`.

    Returns:
      [N, OH, OW, O]. f32 NHWC/HWIO convolutions without dilation or groups run on oneDNN
      when `available()`; everything else (other layouts, dtypes, dilations) on XLA.
    """
    xla = functools.partial(
        lax.conv_general_dilated,
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    plain = (
        lhs.ndim == 4
        and dn == _NHWC
        and lhs.dtype == rhs.dtype == jnp.float32
        and preferred_element_type in (None, jnp.float32)
        and feature_group_count == batch_group_count == 1
        and all(d == 1 for d in (lhs_dilation or (1, 1)) + tuple(rhs_dilation or (1, 1)))
    )
    if not plain or not available():
        return xla()
    strides = tuple(int(s) for s in window_strides)
    return _conv(lhs, rhs, strides, _pads(lhs.shape, rhs.shape, strides, padding))
