"""End-to-end smoke tests of every entry point, run as a user would (subprocesses)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from sb3dr_jax import allocator

REPO = pathlib.Path(__file__).resolve().parents[1]
_MALLOC = (
    "tcmalloc"
    if allocator.find_tcmalloc()
    else "glibc+hugepages"
    if allocator.huge_pages_available()
    else "system"
)


def _run(args, cwd, timeout=600):
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    p = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return p


@pytest.mark.slow
def test_pretrain_distill_evaluate_chain(tmp_path, smoke_data_dir):
    data = f"--config.dataset.data_dir={smoke_data_dir}"
    cfg = lambda name: f"--config={REPO}/sb3dr_jax/configs/{name}.py:smoke"
    p = _run(["launch.pretrain", cfg("pretrain"), data, "--workdir=wd/pretrain"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"{_MALLOC} malloc" in p.stdout  # the launcher re-executed itself on tcmalloc
    assert (tmp_path / "wd/pretrain/checkpoints").is_dir()
    lines = [
        json.loads(x) for x in (tmp_path / "wd/pretrain/metrics.jsonl").read_text().splitlines()
    ]
    assert any("train/loss" in x for x in lines) and any("eval/shapes/knn_acc" in x for x in lines)
    p = _run(
        [
            "launch.distill",
            cfg("distill"),
            "--config.teacher_workdir=wd/pretrain",
            "--workdir=wd/distill",
        ],
        tmp_path,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "wd/distill/export/index.npz").exists()
    p = _run(
        [
            "launch.evaluate",
            f"--config={REPO}/sb3dr_jax/configs/evaluate.py:smoke",
            "--workdir=wd/distill",
            "--output_dir=wd/eval",
        ],
        tmp_path,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "| distill |" in p.stdout and "mAP" in p.stdout
    metrics = json.loads((tmp_path / "wd/eval/metrics.json").read_text())
    assert 0.0 <= metrics["distill"]["mAP"] <= 1.0
    assert (tmp_path / "wd/eval/pr_curve.png").stat().st_size > 1000


def test_distill_without_teacher_says_what_to_run(tmp_path):
    p = _run(
        [
            "launch.distill",
            f"--config={REPO}/sb3dr_jax/configs/distill.py:smoke",
            "--config.teacher_workdir=nowhere",
            "--workdir=wd/distill",
        ],
        tmp_path,
    )
    assert p.returncode != 0
    assert "python -m launch.pretrain" in p.stderr


def test_render_writes_a_contact_sheet(tmp_path, smoke_data_dir):
    p = _run(
        [
            "launch.render",
            f"--config={REPO}/sb3dr_jax/configs/render.py:smoke",
            f"--data_dir={smoke_data_dir}",
        ],
        tmp_path,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    sheet = pathlib.Path(p.stdout.strip().splitlines()[-1].split("contact sheet: ")[1])
    from PIL import Image

    img = Image.open(sheet)
    assert img.size[0] > 300 and img.size[1] > 100
