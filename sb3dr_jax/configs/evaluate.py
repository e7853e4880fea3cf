"""Evaluation config: `--config sb3dr_jax/configs/evaluate.py[:smoke]`."""

from __future__ import annotations

import ml_collections

from sb3dr_jax.configs.common import parse_args


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    a = parse_args(arg)
    c = ml_collections.ConfigDict()
    c.split = "sketch_test"
    c.global_batch = 8 if "smoke" in a else 64
    c.head_min = 20
    c.tail_max = 5
    c.parallel = "pmap"
    return c
