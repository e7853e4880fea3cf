"""Input pipeline throughput next to a trivial consumer, measured in one run.

The trivial consumer iterates the same number of uint8 arrays of the same shape from a
`tf.data.Dataset.from_tensors(...).repeat()` loop: the ceiling that tf.data + numpy conversion
allow, so the ratio shows what decoding, shuffling and batching cost.

    python benchmarks/pipeline.py [--quick]
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rate(it, n: int, per_batch: int) -> float:
    next(it)  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    return n * per_batch / (time.perf_counter() - t0)


def run(quick: bool = False) -> dict:
    """Images/s delivered by `shape_batches` and `sketch_batches` on the demo data.

    Returns:
      {"views_per_s", "trivial_views_per_s", "sketches_per_s", "trivial_sketches_per_s", ratios}.
    """
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from sb3dr_jax.configs.common import dataset_config
    from sb3dr_jax.data import dataset_from_config
    from sb3dr_jax.data.pipeline import shape_batches, sketch_batches

    cfg = dataset_config("demo", smoke=quick)
    cfg.data_dir = os.environ.get(
        "SB3DR_BENCH_DATA", os.path.join(tempfile.gettempdir(), "sb3dr_bench_tfds")
    )
    builder = dataset_from_config(cfg)
    n = 10 if quick else 40
    gb = 16
    r = cfg.render
    v = int(r.num_views)
    views_shape = (gb, v, r.resolution, r.resolution, len(r.channels))
    shapes = _rate(shape_batches(builder, global_batch=gb, seed=0), n, gb * v)
    trivial = tfds.as_numpy(tf.data.Dataset.from_tensors(np.zeros(views_shape, np.uint8)).repeat())
    trivial_rate = _rate(iter(trivial), n, gb * v)
    sgb = 64
    sk = _rate(sketch_batches(builder, global_batch=sgb, seed=0), n, sgb)
    s = cfg.sketch_size
    trivial_sk = tfds.as_numpy(
        tf.data.Dataset.from_tensors(np.zeros((sgb, s, s, 1), np.uint8)).repeat()
    )
    trivial_sk_rate = _rate(iter(trivial_sk), n, sgb)
    return {
        "dataset": builder.info.full_name,
        "views_per_s": round(shapes, 1),
        "trivial_views_per_s": round(trivial_rate, 1),
        "views_ratio_to_trivial": round(shapes / trivial_rate, 3),
        "sketches_per_s": round(sk, 1),
        "trivial_sketches_per_s": round(trivial_sk_rate, 1),
        "sketches_ratio_to_trivial": round(sk / trivial_sk_rate, 3),
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
