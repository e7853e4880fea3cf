"""The benchmarks' bookkeeping: peak FLOP/s table, MFU, the PyTorch reference's plan and rows,
and its bf16 step path (what an accelerator run relies on), on CPU. Nothing here is timed."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO))

from benchmarks import peak_flops as pf  # noqa: E402
from benchmarks import torch_reference as tr  # noqa: E402
from sb3dr_jax import allocator  # noqa: E402


@pytest.mark.parametrize(
    "kind,dtype,tflops",
    [
        ("NVIDIA H200", "bfloat16", 989.4),
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4),
        ("NVIDIA H100 PCIe", "bfloat16", 756.0),
        ("NVIDIA A100-SXM4-80GB", "float32", 156.0),
        ("NVIDIA L40S", "bfloat16", 362.1),
        ("NVIDIA L4", "bfloat16", 121.0),
        ("TPU v5 lite", "bfloat16", 197.0),
        ("TPU v4", "bfloat16", 275.0),
    ],
)
def test_peak_flops_table(kind, dtype, tflops, monkeypatch):
    monkeypatch.delenv("SB3DR_PEAK_TFLOPS", raising=False)
    assert pf.peak_flops(kind, dtype) == pytest.approx(tflops * 1e12)


def test_peak_flops_unknown_and_override(monkeypatch):
    monkeypatch.delenv("SB3DR_PEAK_TFLOPS", raising=False)
    assert pf.peak_flops("cpu", "float32") is None
    assert pf.peak_flops("TPU v4", "float32") is None  # no float32 matrix peak on TPUs
    assert pf.peak_flops("NVIDIA V100-SXM2-16GB", "bfloat16") is None
    monkeypatch.setenv("SB3DR_PEAK_TFLOPS", "100")
    assert pf.peak_flops("cpu", "float32") == 100e12


def test_mfu():
    assert pf.mfu(5e12, 0.01, 1000e12) == pytest.approx(0.5)
    assert pf.mfu(None, 0.01, 1e12) is None
    assert pf.mfu(1e12, 0.01, None) is None


@pytest.mark.skipif(not shutil.which("g++"), reason="needs g++ to build fma_peak.cc")
def test_measure_cpu_peak(monkeypatch):
    r = pf.measure_cpu_peak(seconds=0.02, repeats=1, threads=1)
    assert r["threads"] == 1 and math.isfinite(r["tflops"]) and r["tflops"] > 0, r
    monkeypatch.setenv("CXX", "false")  # a compiler that fails: the reason, not an exception
    r = pf.measure_cpu_peak(seconds=0.02, repeats=1)
    assert set(r) == {"error"} and "fma_peak.cc" in r["error"]


def test_summary_mfu_on_cpu_uses_the_measured_peak(monkeypatch):
    monkeypatch.delenv("SB3DR_PEAK_TFLOPS", raising=False)
    case = dict(preset="resnet18", batch=8, k=4, res=64, dtype="float32")
    times = {"jax": [0.5, 0.5], "torch": [0.4, 0.4]}
    row = tr._summary(case, times, 100e9, "cpu", cpu_peak=250e9)
    assert row["peak_tflops"] == 0.25
    assert row["jax_mfu"] == pytest.approx(0.8) and row["torch_mfu"] == pytest.approx(1.0)
    assert tr._summary(case, times, 100e9, "cpu")["jax_mfu"] is None  # no peak: no MFU
    bf16 = tr._summary(dict(case, dtype="bfloat16"), times, 100e9, "cpu", cpu_peak=250e9)
    assert bf16["jax_mfu"] is None  # the FMA loop measures float32 only
    monkeypatch.setenv("SB3DR_PEAK_TFLOPS", "0.5")  # an explicit peak wins
    assert tr._summary(case, times, 100e9, "cpu", cpu_peak=250e9)["jax_mfu"] == pytest.approx(0.4)


def test_plan_per_machine():
    cases, fws, rounds, steps, windows = tr._plan(False, accelerator=False, torch_device="cpu")
    assert fws[:3] == ("jax", "jax_xla_conv", "torch") and rounds == 16 and steps is None
    tcmalloc = ("torch_tcmalloc",) if allocator.find_tcmalloc() else ()
    assert fws[3:] == (*tcmalloc, "torch_compile")  # the ratio is against the fastest
    assert all(c[4] == "float32" for c in cases)
    cases, fws, rounds, _, windows = tr._plan(False, accelerator=True, torch_device="cuda")
    assert fws == ("jax", "torch") and rounds == 1 and windows > 1
    assert {c[4] for c in cases} == {"bfloat16", "float32"} and all(c[3] == 128 for c in cases)
    _, fws, *_ = tr._plan(True, accelerator=True, torch_device=None)  # a TPU: no PyTorch
    assert fws == ("jax",)


def test_summary_ratio_and_mfu(monkeypatch):
    monkeypatch.delenv("SB3DR_PEAK_TFLOPS", raising=False)
    case = dict(preset="resnet18", batch=64, k=4, res=128, dtype="bfloat16")
    times = {"jax": [0.02, 0.03, 0.025], "torch": [0.05, 0.04, 0.045]}
    row = tr._summary(case, times, 10e12, "NVIDIA H200")
    assert row["jax_s_per_step"] == 0.025 and row["torch_s_per_step"] == 0.045
    assert row["ratio_jax_over_torch"] == pytest.approx(1.8)
    assert row["ratios_per_round"] == [2.5, 1.333, 1.8]
    assert row["jax_mfu"] == pytest.approx(10e12 / 0.025 / 989.4e12, abs=1e-4)
    assert row["torch_mfu"] == pytest.approx(10e12 / 0.045 / 989.4e12, abs=1e-4)
    assert row["jax_views_per_s"] == pytest.approx(64 * 8 / 0.025)
    row = tr._summary(case, {"jax": [0.02]}, None, "TPU v4")  # JAX alone, FLOPs unknown
    assert "ratio_jax_over_torch" not in row and row["jax_mfu"] is None


def test_summary_keeps_the_faster_torch_allocator():
    case = dict(preset="resnet_tiny", batch=16, k=4, res=64, dtype="float32")
    times = {
        "jax": [0.10, 0.20, 0.10],
        "jax_xla_conv": [0.20, 0.30, 0.20],
        "torch": [0.15, 0.30, 0.16],
        "torch_tcmalloc": [0.13, 0.22, 0.12],
    }
    row = tr._summary(case, times, None, "cpu", "tcmalloc")
    assert row["torch_allocator"] == "tcmalloc" and row["jax_allocator"] == "tcmalloc"
    assert row["torch_s_per_step"] == 0.13 and row["torch_system_s_per_step"] == 0.16
    # Ratios round by round: a slow round (the second) that hits both does not move them.
    assert row["ratios_per_round"] == [1.3, 1.1, 1.2] and row["ratio_jax_over_torch"] == 1.2
    assert row["ratio_quartiles"] == [1.15, 1.25]
    assert row["ratio_xla_conv_over_torch"] == pytest.approx(0.65)


def test_paired_rounds_alternate(monkeypatch):
    """Every round times each framework once, the first one rotating, in live processes."""
    calls, closed = [], []

    class FakeServer:
        def __init__(self, fw, case, **kw):
            flops = 5e9 if fw == "jax_xla_conv" else None  # custom calls are not counted
            self.fw, self.info = fw, {"s": 0.25, "flops": flops, "device_kind": "cpu",
                                      "allocator": "tcmalloc"}  # fmt: skip

        def time(self, steps):
            calls.append((self.fw, steps))
            return {"jax": 0.1, "torch": 0.2, "jax_xla_conv": 0.3}[self.fw]

        def close(self):
            closed.append(self.fw)

    monkeypatch.setattr(tr, "_StepServer", FakeServer)
    times, flops, kind, alloc = tr._paired({}, ("jax", "jax_xla_conv", "torch"), 3, gap_s=0)
    assert [fw for fw, _ in calls] == ["jax", "jax_xla_conv", "torch", "jax_xla_conv", "torch",
                                       "jax", "torch", "jax", "jax_xla_conv"]  # fmt: skip
    assert {n for _, n in calls} == {4}  # ~1 s of 0.25 s steps per sample
    assert times == {"jax": [0.1] * 3, "jax_xla_conv": [0.3] * 3, "torch": [0.2] * 3}
    assert (flops, kind, alloc) == (5e9, "cpu", "tcmalloc") and len(closed) == 3


def test_summary_ratio_is_against_the_fastest_torch_variant():
    # torch.compile faster than eager: the ratio and torch_variant follow it.
    case = dict(preset="resnet_tiny", batch=16, k=4, res=64, dtype="float32")
    times = {"jax": [0.10, 0.10], "torch": [0.20, 0.20], "torch_compile": [0.125, 0.125],
             "torch_compile_compile_s": 42.0}  # fmt: skip
    row = tr._summary(case, times, None, "cpu")
    assert row["torch_variant"] == "torch_compile" and row["ratio_jax_over_torch"] == 1.25
    assert row["torch_compile_s_per_step"] == 0.125 and row["torch_compile_compile_s"] == 42.0


def test_a_torch_compile_server_that_fails_to_start_is_left_out(monkeypatch):
    class FakeServer:
        def __init__(self, fw, case, start_timeout_s=None):
            if fw == "torch_compile":
                raise RuntimeError("torch benchmark server failed: killed")
            self.fw, self.info = fw, {"s": 0.5, "flops": None, "device_kind": "cpu",
                                      "allocator": "system"}  # fmt: skip

        def time(self, steps):
            return 0.5

        def close(self):
            pass

    monkeypatch.setattr(tr, "_StepServer", FakeServer)
    times, *_ = tr._paired({}, ("jax", "torch", "torch_compile"), 2, gap_s=0)
    assert "torch_compile" not in times and "killed" in times["torch_compile_skipped"]
    row = tr._summary(dict(preset="resnet_tiny", batch=4, k=2, res=32, dtype="float32"), times,
                      None, "cpu")  # fmt: skip
    assert row["torch_variant"] == "torch" and "SB3DR_TORCH_COMPILE_TIMEOUT" in row[
        "torch_compile_skipped"]  # fmt: skip


def test_env_per_framework(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libtcmalloc_minimal.so.4:/x/libother.so")
    monkeypatch.setenv("GLIBC_TUNABLES", allocator.HUGETLB)
    assert tr._env("torch")["LD_PRELOAD"] == "/x/libother.so"  # the system allocator
    assert "GLIBC_TUNABLES" not in tr._env("torch")
    assert tr._env("jax")["LD_PRELOAD"] == "/x/libother.so"  # it preloads tcmalloc itself
    if allocator.find_tcmalloc():
        assert "tcmalloc" in tr._env("torch_tcmalloc")["LD_PRELOAD"]


def test_step_server_answers_and_reports_failures():
    pytest.importorskip("torch", reason="PyTorch is optional: pip install -e '.[torch]'")
    case = dict(preset="resnet_tiny", batch=2, k=1, res=32, dtype="float32", torch_device="cpu")
    server = tr._StepServer("torch", case)
    try:
        assert server.info["s"] > 0 and server.info["allocator"] == "system"
        assert all(0 < server.time(n) < 60 for n in (1, 2))
    finally:
        server.close()
    with pytest.raises(RuntimeError, match="torch benchmark server failed(.|\n)*nope"):
        tr._StepServer("torch", case | {"preset": "nope"})


def test_bf16_jax_step_runs_and_counts_flops():
    """The accelerator cases' path (bf16 compute, XLA convolutions) runs and is counted."""
    secs, flops = tr.jax_step_time(
        "resnet_tiny", 2, 1, 32, steps=1, conv_impl="xla", dtype="bfloat16", windows=2
    )
    assert len(secs) == 2 and all(s > 0 and math.isfinite(s) for s in secs)
    assert flops and flops > 1e8  # two encoders over 4 views of 32 px: ~1 GFLOP
    with pytest.raises(ValueError, match="dtype"):
        tr.jax_step_time("resnet_tiny", 2, 1, 32, steps=1, dtype="float16")


def test_bf16_torch_step_runs():
    pytest.importorskip("torch", reason="PyTorch is optional: pip install -e '.[torch]'")
    secs = tr.torch_step_time("resnet_tiny", 2, 1, 32, steps=1, dtype="bfloat16", windows=2)
    assert len(secs) == 2 and all(s > 0 and math.isfinite(s) for s in secs)


def test_step_machinery_imports_without_tensorflow():
    """Hosts that only time steps (an accelerator machine with no TensorFlow) can import it."""
    code = (
        "import sys; import benchmarks.torch_reference, benchmarks.train_steps; "
        "import sb3dr_jax.pretrain, sb3dr_jax.distill, sb3dr_jax.train; "
        "bad = [m for m in ('tensorflow', 'tensorflow_datasets', 'clu') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=300)


@pytest.mark.parametrize("backend,cuda", [("gpu", True), ("tpu", False)])
def test_run_on_an_accelerator(backend, cuda, monkeypatch):
    """The accelerator plan end to end, with the timing processes stubbed (no GPU here)."""
    import types

    import jax

    calls = []

    def fake_measure(fw, case):
        calls.append((fw, case["dtype"], case["torch_device"]))
        sec = {"jax": 0.02, "torch": 0.03}[fw]
        flops = 2e12 if fw == "jax" else None
        return {"s": [sec] * case["windows"], "flops": flops, "device_kind": "NVIDIA H200"}

    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: cuda))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(tr, "_time_in_subprocess", fake_measure)
    monkeypatch.delenv("SB3DR_PEAK_TFLOPS", raising=False)
    out = tr.run()
    fws = {fw for fw, *_ in calls}
    assert fws == ({"jax", "torch"} if cuda else {"jax"})
    assert all(dev == ("cuda" if cuda else None) for *_, dev in calls)
    assert [c["dtype"] for c in out["cases"]] == ["bfloat16", "bfloat16", "float32"]
    first = out["cases"][0]
    assert first["jax_mfu"] == pytest.approx(2e12 / 0.02 / 989.4e12, abs=1e-4)
    assert out["ratio_default"] == (pytest.approx(1.5) if cuda else None)
    assert out["jax_conv_impl"] == "xla"


def test_conv_kernels_time_the_forward_with_the_gradients():
    """A vjp whose output is unused lets XLA drop the forward: the timed function keeps it."""
    import jax
    from jax import lax

    from benchmarks import conv_kernels as ck

    x, w = jax.numpy.ones((2, 8, 8, 4)), jax.numpy.ones((3, 3, 4, 8))
    fwd, fwd_bwd = ck.jax_layer_fns(lax.conv_general_dilated, 1)
    g = jax.numpy.ones(jax.eval_shape(fwd, x, w).shape)
    hlo = fwd_bwd.lower(x, w, g).compile().as_text()
    assert hlo.count("convolution(") == 3  # y, dx and dw
    y, (dx, dw) = fwd_bwd(x, w, g)
    assert y.shape == (2, 8, 8, 8) and dx.shape == x.shape and dw.shape == w.shape


def test_ab_parses_variants():
    from benchmarks import ab

    assert ab.parse_env("A=1  XLA_FLAGS=--x=y") == {"A": "1", "XLA_FLAGS": "--x=y"}
    assert ab.parse_env("") == {}
    with pytest.raises(ValueError, match="'oops'"):
        ab.parse_env("A=1 oops")
    got = ab.parse_config("model.view_chunk=32, model.conv_impl=xla,optim.lr=0.5,x.flag=True")
    assert got == {"model.view_chunk": 32, "model.conv_impl": "xla", "optim.lr": 0.5,
                   "x.flag": True}  # fmt: skip
    with pytest.raises(ValueError, match="'model.view_chunk'"):
        ab.parse_config("model.view_chunk")


def test_teacher_config_overrides_must_name_existing_fields():
    c = tr.teacher_config("resnet18", 8, 4, "auto", "float32", {"model.view_chunk": 32})
    assert c.model.view_chunk == 32 and c.global_batch == 8 and c.ssl.views_per_branch == 4
    with pytest.raises(ValueError, match="'model.view_chunks'.*'view_chunks'"):
        tr.teacher_config("resnet18", 8, 4, "auto", "float32", {"model.view_chunks": 32})


def test_ab_alternates_two_live_variants(monkeypatch):
    """Each variant runs in its own server with its env and config; rounds alternate."""
    from benchmarks import ab

    started, calls = {}, []

    class FakeServer:
        def __init__(self, fw, case, env):
            self.name = "a" if env else "b"
            started[self.name] = (fw, case["config"], env)
            self.info = {"s": 0.5}

        def time(self, steps):
            calls.append((self.name, steps))
            return {"a": 0.08, "b": 0.1}[self.name] * (1 + (len(calls) - 1) // 2)  # drifting

        def close(self):
            pass

    monkeypatch.setattr(tr, "_StepServer", FakeServer)
    a = ({"SB3DR_ONEDNN_THREADS": "1"}, {"model.view_chunk": 32})
    r = ab.run_ab("resnet18", 8, 3, a, ({}, {}), gap_s=0)
    assert started == {"a": ("jax", {"model.view_chunk": 32}, a[0]), "b": ("jax", {}, {})}
    assert [n for n, _ in calls] == ["a", "b", "b", "a", "a", "b"] and calls[0][1] == 2
    # A drifting machine moves both samples of a round; the per-round ratio stays 0.8.
    assert r["ratio_a_over_b"] == pytest.approx(0.8) and r["rounds"] == 3
    assert r["a"]["s_per_step"] == pytest.approx(0.16)  # the median round
    assert r["a"]["config"] == {"model.view_chunk": 32} and r["b"]["env"] == {}
    with pytest.raises(ValueError, match="model.nope"):
        ab.run_ab("resnet18", 8, 1, ({}, {"model.nope": 1}), ({}, {}), gap_s=0)
