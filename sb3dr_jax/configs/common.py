"""Config pieces shared by every entry point (dataset block, argument parsing)."""

from __future__ import annotations

import os
import pathlib

import ml_collections

# `../shared/data` beside the checkout (the repository's parent), or beside the current folder.
_REPO = pathlib.Path(__file__).resolve().parents[2]
SHORTCUTS = {"tub16": "tub16-psb-dev", "qd90": "qd90-psb-dev"}


class ConfigError(ValueError):
    """A config value that cannot be used; the message names the field (`dataset.name`, ...)."""


def parse_args(arg: str | None) -> dict[str, str]:
    """Parses `"smoke,dataset=tub16,simsiam"` into `{"smoke": "", "dataset": "tub16", ...}`."""
    out: dict[str, str] = {}
    for tok in (arg or "").split(","):
        tok = tok.strip()
        if tok:
            key, _, value = tok.partition("=")
            out[key.strip()] = value.strip()
    return out


def shared_data_root(name: str) -> str:
    """Resolves a `../shared/data/<name>` folder: `$SB3DR_SHARED_DATA/<name>` when set, else
    beside the repository, else beside the current folder."""
    env = os.environ.get("SB3DR_SHARED_DATA")
    if env:
        return str(pathlib.Path(env) / name)
    for base in (_REPO.parent, pathlib.Path.cwd().parent, pathlib.Path.cwd()):
        p = base / "shared" / "data" / name
        if p.is_dir():
            return str(p)
    return str(_REPO.parent / "shared" / "data" / name)


def dataset_config(name: str = "demo", *, smoke: bool = False) -> ml_collections.ConfigDict:
    """The `dataset` block of every config.

    Args:
      name: "demo", "tub16", "qd90", "shared" (set `root`), "shrec13" or "shrec14" (set `root`
        to the unpacked official folder).
      smoke: shrink everything so a test builds the dataset in seconds.

    Returns:
      A ConfigDict with the dataset, render and sketch settings.
    """
    c = ml_collections.ConfigDict()
    c.name = name
    c.root = ""
    if name in SHORTCUTS:
        c.name, c.root = "shared", shared_data_root(SHORTCUTS[name])
    c.data_dir = "data_cache/tfds"
    # Keep the decoded training views in host memory when one process's part takes at most
    # this many GiB (0: inflate the zlib records every epoch, ~8,000 views of 128 px per
    # core-second, benchmarks/input_cores.py). Every benchmark set fits: SHREC'14 at 128 px
    # is 5.3 GiB.
    c.cache_gib = 8.0
    c.render = ml_collections.ConfigDict(
        dict(
            num_views=12,
            resolution=64,
            layout="ring",
            elevation=30.0,
            channels=("depth", "shade", "line"),
        )
    )
    c.sketch_size = 64
    c.stroke_width = 2.0
    c.max_faces = 20000
    # Caps on the number of items read (0 = all): for quick tests on real data.
    c.max_shapes = 0
    c.max_sketches = 0
    c.demo = ml_collections.ConfigDict(
        dict(
            num_classes=10,
            max_shapes_per_class=30,
            imbalance_ratio=10.0,
            sketches_train=24,
            sketches_test=8,
            seed=0,
        )
    )
    if smoke:
        c.render.resolution = 32
        c.sketch_size = 32
        c.demo.update(
            num_classes=4,
            max_shapes_per_class=6,
            imbalance_ratio=3.0,
            sketches_train=6,
            sketches_test=3,
        )
    return c
