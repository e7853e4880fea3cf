"""`python -m launch.render` config: the dataset block, and how to run the build."""

from __future__ import annotations

import ml_collections

from sb3dr_jax.configs.common import dataset_config, parse_args


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Args: "smoke", "dataset=<name>", "beam" (build on Apache Beam), comma-separated."""
    a = parse_args(arg)
    c = ml_collections.ConfigDict()
    c.dataset = dataset_config(a.get("dataset", "demo"), smoke="smoke" in a)
    # Apache Beam (the `beam` extra): `enabled` renders through a Beam pipeline, the same records
    # as the in-process build; `workers` DirectRunner processes; `options` extra pipeline flags
    # (a `--runner=...` there runs on that runner instead: Dataflow, Flink, Spark).
    c.beam = ml_collections.ConfigDict(dict(enabled="beam" in a, workers=2, options=""))
    return c
