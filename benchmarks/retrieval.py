"""Query latency and throughput of the retrieval index against gallery size.

Random 256-d unit embeddings; single-query latency (p50, p99) and batched throughput, for
galleries of 1e3, 1e4, 1e5 and 1e6 shapes (quick: up to 1e5).

    python benchmarks/retrieval.py [--quick]
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(quick: bool = False) -> dict:
    """Measures `RetrievalIndex.search` (jitted cosine top-10).

    Returns:
      {"dim", "k", "by_gallery": {N: {"p50_ms", "p99_ms", "batch64_queries_per_s"}}}.
    """
    import numpy as np

    from sb3dr_jax.evals.index import RetrievalIndex

    rng = np.random.default_rng(0)
    dim, k = 256, 10
    sizes = [10**3, 10**4, 10**5] + ([] if quick else [10**6])
    out = {"dim": dim, "k": k, "by_gallery": {}}
    for n in sizes:
        emb = rng.standard_normal((n, dim), dtype=np.float32)
        index = RetrievalIndex(
            emb, [str(i) for i in range(n)], np.zeros(n, np.int64), ["x"], "bench"
        )
        q = rng.standard_normal((64, dim), dtype=np.float32)
        index.search(q[:1], k)
        lat = []
        for i in range(20 if n >= 10**6 else 50):
            t0 = time.perf_counter()
            index.search(q[i % 64 : i % 64 + 1], k)
            lat.append((time.perf_counter() - t0) * 1e3)
        index.search(q, k)
        reps = 3 if n >= 10**6 else 10
        t0 = time.perf_counter()
        for _ in range(reps):
            index.search(q, k)
        qps = reps * 64 / (time.perf_counter() - t0)
        out["by_gallery"][str(n)] = {
            "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "batch64_queries_per_s": round(qps, 1),
        }
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
