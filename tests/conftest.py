"""Test set-up: 8 fake CPU devices (before JAX starts) and the shared real data."""

from __future__ import annotations

import os
import pathlib

# Must run before anything imports jax: data-parallel tests expect 8 local devices.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def _shared_data_root() -> pathlib.Path:
    env = os.environ.get("SB3DR_SHARED_DATA")
    return pathlib.Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Root of `../shared/data` (tub16-psb-dev, qd90-psb-dev); skips when absent."""
    root = _shared_data_root()
    if not (root / "tub16-psb-dev" / "classes" / "Model.cla").exists():
        pytest.skip(f"shared real data not found at {root} (set SB3DR_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def tub16(shared_data: pathlib.Path) -> pathlib.Path:
    return shared_data / "tub16-psb-dev"


@pytest.fixture(scope="session")
def qd90(shared_data: pathlib.Path) -> pathlib.Path:
    root = shared_data / "qd90-psb-dev"
    if not root.exists():
        pytest.skip(f"{root} not found")
    return root
