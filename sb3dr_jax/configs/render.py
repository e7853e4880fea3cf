"""`python -m launch.render` config: the dataset block alone."""

from __future__ import annotations

import ml_collections

from sb3dr_jax.configs.common import dataset_config, parse_args


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    a = parse_args(arg)
    c = ml_collections.ConfigDict()
    c.dataset = dataset_config(a.get("dataset", "demo"), smoke="smoke" in a)
    return c
