"""Peak dense FLOP/s per chip, for model FLOPs utilisation (MFU = model FLOP/s / peak).

Vendor datasheet figures without structured sparsity. For float32 on NVIDIA GPUs the peak is
TF32 tensor-core throughput: XLA's and cuDNN's default float32 convolutions use TF32 on
Ampere and newer (JAX's default matmul precision; PyTorch's `cudnn.allow_tf32`). TPUs have no
float32 matrix peak (float32 matmuls run as several bf16 passes), so they get none.
`SB3DR_PEAK_TFLOPS` overrides the table (e.g. for a chip it lacks).

CPUs have no table entry: a VM's clock and vector units depend on the exact part and the host.
`measure_cpu_peak` measures it instead (`fma_peak.cc`: fused multiply-adds on every core, on the
widest vectors g++ targets here), the ceiling that oneDNN's convolution kernels approach.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile

# (substring of the device kind, {dtype: TFLOP/s}); the first match wins, so the more specific
# names come first. Device kinds as JAX (`device_kind`) and PyTorch (`get_device_name`) spell
# them, e.g. "NVIDIA H200", "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "TPU v5 lite".
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7}),  # and GH200's Hopper
    ("H100 PCIe", {"bfloat16": 756.0, "float16": 756.0, "float32": 378.0}),
    ("H100 NVL", {"bfloat16": 835.5, "float16": 835.5, "float32": 417.5}),
    ("H100", {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7}),  # SXM
    ("A100", {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0}),
    ("L40S", {"bfloat16": 362.1, "float16": 362.1, "float32": 183.0}),
    ("L40", {"bfloat16": 181.0, "float16": 181.0, "float32": 90.5}),
    ("L4", {"bfloat16": 121.0, "float16": 121.0, "float32": 60.0}),
    ("A10", {"bfloat16": 125.0, "float16": 125.0, "float32": 62.5}),
    ("V100", {"float16": 125.0, "float32": 15.7}),  # no bf16 tensor cores
    ("TPU v6 lite", {"bfloat16": 918.0}),  # Trillium (v6e)
    ("TPU v6e", {"bfloat16": 918.0}),
    ("TPU v5 lite", {"bfloat16": 197.0}),  # v5e
    ("TPU v5e", {"bfloat16": 197.0}),
    ("TPU v5p", {"bfloat16": 459.0}),
    ("TPU v5", {"bfloat16": 459.0}),
    ("TPU v4", {"bfloat16": 275.0}),
    ("TPU v3", {"bfloat16": 123.0}),
)


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """Peak dense FLOP/s of one chip for a compute dtype.

    Args:
      device_kind: the chip's name (`jax.devices()[0].device_kind`).
      dtype: the model's compute dtype ("bfloat16", "float16" or "float32").

    Returns:
      FLOP/s, or None when the chip or the dtype is not in the table (CPUs are not: their peak
      depends on the clock and vector units of the exact part) and `SB3DR_PEAK_TFLOPS` is unset.
    """
    override = os.environ.get("SB3DR_PEAK_TFLOPS")
    if override:
        return float(override) * 1e12
    for name, peaks in PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            tflops = peaks.get(dtype)
            return tflops * 1e12 if tflops else None
    return None


def mfu(flops_per_step: float | None, seconds_per_step: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the chip's peak (None if unknown)."""
    if not flops_per_step or not peak or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / peak


_FMA_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fma_peak.cc")


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, as OpenMP and XLA see it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def measure_cpu_peak(seconds: float = 0.3, repeats: int = 3, threads: int | None = None) -> dict:
    """Measures this CPU's peak float32 FLOP/s with an FMA loop on every core.

    Run it while nothing else computes (the benchmarks call it before any timing process
    starts). The best of `repeats` runs of ~`seconds` each is the peak.

    Args:
      seconds: length of one timed run.
      repeats: timed runs; the fastest counts.
      threads: OpenMP threads (default: the cores this process may use).

    Returns:
      {"tflops", "threads", "method"}; or {"error": why} when no C++ compiler with OpenMP can
      build `fma_peak.cc`.
    """
    threads = threads or cpu_count()
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        return {"error": "no C++ compiler (g++) on PATH to build fma_peak.cc"}
    with tempfile.TemporaryDirectory() as tmp:
        so = os.path.join(tmp, "fma_peak.so")
        cmd = [cxx, "-O2", "-march=native", "-fopenmp", "-shared", "-fPIC", _FMA_SRC, "-o", so]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode:
            return {"error": f"building {_FMA_SRC} failed: {res.stderr[-500:]}"}
        lib = ctypes.CDLL(so)
    lib.sb3dr_fma_seconds.restype = ctypes.c_double
    lib.sb3dr_fma_seconds.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_float]
    lib.sb3dr_fma_flops.restype = ctypes.c_double
    lib.sb3dr_fma_flops.argtypes = [ctypes.c_long, ctypes.c_int]
    iters = 100_000
    while (dt := lib.sb3dr_fma_seconds(iters, threads, 1.0)) < 0.05:  # calibrate
        iters *= 4
    iters = max(1, int(iters * seconds / dt))
    best = max(
        lib.sb3dr_fma_flops(iters, threads) / lib.sb3dr_fma_seconds(iters, threads, 1.0)
        for _ in range(repeats)
    )
    return {
        "tflops": round(best / 1e12, 4),
        "threads": threads,
        "method": "float32 FMA loop on every core (fma_peak.cc, g++ -march=native)",
    }
