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


@pytest.fixture(scope="session")
def smoke_data_dir(tmp_path_factory) -> str:
    """A TFDS data_dir holding the smoke demo dataset (built once per session)."""
    from sb3dr_jax.configs.common import dataset_config
    from sb3dr_jax.data import dataset_from_config

    d = str(tmp_path_factory.mktemp("tfds"))
    cfg = dataset_config("demo", smoke=True)
    cfg.data_dir = d
    dataset_from_config(cfg)
    return d


@pytest.fixture(scope="session")
def smoke_builder(smoke_data_dir):
    from sb3dr_jax.configs.common import dataset_config
    from sb3dr_jax.data import dataset_from_config

    cfg = dataset_config("demo", smoke=True)
    cfg.data_dir = smoke_data_dir
    return dataset_from_config(cfg)


def smoke_config(module: str, data_dir: str, **overrides):
    """A smoke config of `sb3dr_jax.configs.<module>` pointed at the session's data_dir."""
    import importlib

    cfg = importlib.import_module(f"sb3dr_jax.configs.{module}").get_config("smoke")
    cfg.dataset.data_dir = data_dir
    for k, v in overrides.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return cfg


@pytest.fixture(scope="session")
def teacher_workdir(smoke_data_dir, tmp_path_factory) -> str:
    """A smoke teacher trained for 2 steps on 8 fake devices (shared by student tests)."""
    from sb3dr_jax import pretrain

    wd = str(tmp_path_factory.mktemp("teacher"))
    pretrain.run(smoke_config("pretrain", smoke_data_dir), wd)
    return wd


@pytest.fixture(scope="session")
def student_workdir(teacher_workdir, smoke_data_dir, tmp_path_factory) -> str:
    """A smoke student distilled for 2 steps from `teacher_workdir`."""
    from sb3dr_jax import distill

    wd = str(tmp_path_factory.mktemp("student"))
    distill.run(smoke_config("distill", smoke_data_dir, teacher_workdir=teacher_workdir), wd)
    return wd


@pytest.fixture(scope="session")
def web_export(smoke_builder, smoke_data_dir, tmp_path_factory) -> str:
    """A small export for the web tests: a randomly initialised smoke student, a random
    gallery over the smoke shapes, and the web assets written by the export code itself."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import tensorflow_datasets as tfds

    from sb3dr_jax.data.web_assets import write_web_assets
    from sb3dr_jax.evals.index import RetrievalIndex
    from sb3dr_jax.models import build_model
    from sb3dr_jax.serving.export import save_export

    out = tmp_path_factory.mktemp("web_export")
    kw = dict(backbone="resnet_tiny", num_filters=8, hidden=32, embed_dim=16, conv_impl="xla")
    s = int(smoke_builder.info.metadata["sketch_size"])
    model = build_model("sketch_student", **kw)
    params = model.init(jax.random.key(0), jnp.zeros((1, s, s, 1), jnp.uint8))["params"]
    shapes = list(tfds.as_numpy(smoke_builder.as_dataset(split="shapes")))
    index = RetrievalIndex(
        np.random.default_rng(0).normal(size=(len(shapes), 16)),
        [ex["id"].decode() for ex in shapes],
        [int(ex["label"]) for ex in shapes],
        list(smoke_builder.info.metadata["class_names"]),
        "random-teacher",
        {"dataset": smoke_builder.info.full_name},
    )
    save_export(
        out,
        student_params=params,
        student_config={"model": kw, "sketch_size": s},
        index=index,
        teacher_id="random-teacher",
    )
    write_web_assets(out, smoke_builder, index, source_root=smoke_builder.source_dir)
    return str(out)
