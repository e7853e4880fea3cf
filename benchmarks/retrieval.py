"""Query latency and throughput of the retrieval index against gallery size.

Random 256-d unit embeddings; single-query latency (p50, p99) and batched throughput, for
galleries of 1e3, 1e4, 1e5 and 1e6 shapes (quick: up to 1e5).

Clustered mode (`--clustered N`): a mixture of 10,000 Gaussians with Zipf(1.1) cluster sizes
(the largest holds ~14% of the gallery, the smallest a few items), each with a random 16-d
principal subspace plus isotropic noise, 256-d, unit-norm; queries are fresh draws from the
same mixture. Exact search and the ANN indexes (sb3dr_jax.evals.ann, through RetrievalIndex)
side by side: build time, peak RSS, index size, recall@10 against exact search, p50/p99
single-query latency, batched throughput. The ANN search parameters (nprobe / efSearch,
rerank) are tuned on 200 queries and reported on 200 others. Galleries of 10^7 are generated
as float16 in chunks (float32 would be 10 GB), and the exact side there is a chunked matmul.

    python benchmarks/retrieval.py [--quick]
    nice -n 5 python benchmarks/retrieval.py --clustered 1000000 [--kinds exact,ivfpq,hnsw]
    nice -n 5 python benchmarks/retrieval.py --clustered 10000000 --kinds exact,ivfpq

The clustered runs write benchmarks/results/retrieval_clustered_<N>_<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import resource
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


DIM, K = 256, 10
CLUSTERS, ZIPF, RANK, SUPER, SPREAD = 10_000, 1.1, 16, 100, 0.8


def _rss_gib() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


class Mixture:
    """The clustered embedding distribution (see the module docstring)."""

    def __init__(self, seed: int = 0):
        import numpy as np

        rng = np.random.default_rng(seed)
        self.p = 1.0 / np.arange(1, CLUSTERS + 1) ** ZIPF
        self.p /= self.p.sum()
        # Cluster centres around 100 super-categories: a rare cluster's nearest other items
        # are in related clusters (as a rare class's are in similar classes), not anywhere.
        sup = rng.standard_normal((SUPER, DIM), dtype=np.float32)
        sup /= np.linalg.norm(sup, axis=1, keepdims=True)
        c = sup[rng.integers(0, SUPER, CLUSTERS)]
        c += SPREAD * rng.standard_normal((CLUSTERS, DIM), dtype=np.float32) / np.sqrt(DIM)
        self.centers = c / np.linalg.norm(c, axis=1, keepdims=True)
        # Principal axes with decaying spread: the items of a cluster vary mostly along 16
        # directions (as real embeddings have a low intrinsic dimension), plus small noise.
        scale = (0.45 / np.sqrt(np.arange(1, RANK + 1))).astype(np.float32)
        b = rng.standard_normal((CLUSTERS, RANK, DIM), dtype=np.float32) / np.sqrt(DIM)
        self.basis = b * scale[None, :, None]
        self.noise = 0.12 / np.sqrt(DIM)

    def _draw(self, rng, cluster: int, n: int):
        import numpy as np

        z = rng.standard_normal((n, RANK), dtype=np.float32)
        x = self.centers[cluster] + z @ self.basis[cluster]
        x += self.noise * rng.standard_normal((n, DIM), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def gallery(self, n: int, dtype, seed: int = 1, chunk: int = 1 << 18):
        """[n, DIM] unit rows of `dtype`, grouped by cluster, generated chunk by chunk."""
        import numpy as np

        rng = np.random.default_rng(seed)
        counts = rng.multinomial(n, self.p)
        out = np.empty((n, DIM), dtype)
        at = 0
        for c in np.flatnonzero(counts):
            for s in range(0, counts[c], chunk):
                m = min(chunk, counts[c] - s)
                out[at : at + m] = self._draw(rng, c, m)
                at += m
        return out

    def queries(self, n: int, seed: int):
        """[n, DIM] float32 unit queries drawn from the mixture."""
        import numpy as np

        rng = np.random.default_rng(seed)
        cl = rng.choice(CLUSTERS, n, p=self.p)
        return np.concatenate([self._draw(rng, c, 1) for c in cl])


def _latency(search, queries) -> dict:
    """p50/p99 single-query latency (ms) and batched throughput over `queries`."""
    import numpy as np

    search(queries[:1])
    lat = []
    for i in range(len(queries)):
        t0 = time.perf_counter()
        search(queries[i : i + 1])
        lat.append((time.perf_counter() - t0) * 1e3)
    t0 = time.perf_counter()
    search(queries)
    qps = len(queries) / (time.perf_counter() - t0)
    return {
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        f"batch{len(queries)}_queries_per_s": round(qps, 1),
    }


def _recall(found, truth) -> float:
    """Mean |found ∩ truth| / k over queries (recall@k against exact search)."""
    return round(sum(len(set(f) & set(t)) for f, t in zip(found, truth)) / truth.size, 4)


# Search parameters swept on the tuning queries (the build parameters are fixed per run).
SWEEP = {
    "ivfpq": [
        {"nprobe": p, "rerank": r} for p in (8, 16, 32, 64, 128) for r in (30, 100, 300, 1000)
    ],
    "hnsw": [{"ef_search": e, "rerank": r} for e in (32, 64, 128, 256) for r in (30, 100)],
}


def clustered(n: int, kinds=("exact", "ivfpq"), build: dict | None = None, target=0.95) -> dict:
    """Exact vs ANN on the clustered mixture (see the module docstring).

    Args:
      n: gallery size.
      kinds: "exact" and/or ANN kinds ("ivfpq", "hnsw").
      build: IndexConfig overrides for the build (nlist, m, hnsw_m, ...).
      target: recall@10 the tuned search parameters must reach on the tuning queries.

    Returns:
      {"n", "dim", "k", "data", per kind: {build_s, peak_rss_gib, index_bytes, tuned,
      sweep (tuning queries), recall_at_10, p50_ms, p99_ms, batch*_queries_per_s}}.
    """
    import dataclasses

    import numpy as np

    from sb3dr_jax.evals import ann
    from sb3dr_jax.evals.index import RetrievalIndex

    big = n > 2_000_000  # float32 would not fit beside the index: generate float16
    mix = Mixture()
    t0 = time.perf_counter()
    emb = mix.gallery(n, np.float16 if big else np.float32)
    out: dict = {
        "n": n,
        "dim": DIM,
        "k": K,
        "data": {
            "clusters": CLUSTERS,
            "zipf": ZIPF,
            "rank": RANK,
            "dtype": str(emb.dtype),
            "gen_s": round(time.perf_counter() - t0, 1),
            "peak_rss_gib": _rss_gib(),
        },
    }
    tune_q, report_q = mix.queries(200, seed=2), mix.queries(200, seed=3)
    t0 = time.perf_counter()
    both = ann.exact_topk(np.concatenate([tune_q, report_q]), emb, K)[1]  # one pass over emb
    truth_tune, truth = both[:200], both[200:]
    out["data"]["ground_truth_s"] = round(time.perf_counter() - t0, 1)
    ids, labels = [str(i) for i in range(n)], np.zeros(n, np.int64)
    print(f"[clustered {n}] data ready {out['data']}", file=sys.stderr, flush=True)
    for kind in kinds:
        t0 = time.perf_counter()
        if kind == "exact" and big:  # the jitted exact index would need a float32 copy
            res = {"method": "chunked matmul over the float16 gallery (ann.exact_topk)"}
            search = lambda q: ann.exact_topk(q, emb, K)
            one = []  # each single query reads the whole 5 GB gallery: 2 of them
            for i in range(2):
                t1 = time.perf_counter()
                search(report_q[i : i + 1])
                one.append((time.perf_counter() - t1) * 1e3)
            res["single_query_ms_mean_of_2"] = round(float(np.mean(one)), 1)
            res["batch400_queries_per_s"] = round(400 / out["data"]["ground_truth_s"], 2)
            res["recall_at_10"] = _recall(search(report_q)[1], truth)
            out[kind] = res
            continue
        cfg = ann.IndexConfig(index=kind, **(build or {}))
        index = RetrievalIndex(emb, ids, labels, ["x"], "bench", index_config=cfg)
        res = {"build_s": round(time.perf_counter() - t0, 1), "peak_rss_gib": _rss_gib()}
        if kind != "exact":
            res["index_bytes"] = ann.index_bytes(index.ann_index)
            res["store_bytes"] = int(index.embeddings.nbytes)
            res["build"] = {k: v for k, v in cfg.to_dict().items() if k in _BUILD_KEYS[kind]}
            if kind == "ivfpq":
                res["build"]["nlist"] = int(index.ann_index.nlist)
            sweep = []
            for params in SWEEP[kind]:
                index.index_config = dataclasses.replace(cfg, **params)
                t1 = time.perf_counter()
                found = index.search(tune_q, K)[1]
                ms = (time.perf_counter() - t1) * 1e3 / len(tune_q)
                sweep.append({**params, "recall_at_10": _recall(found, truth_tune),
                              "batch_ms_per_query": round(ms, 3)})  # fmt: skip
                print(f"[clustered {n}] {kind} {sweep[-1]}", file=sys.stderr, flush=True)
            ok = [s for s in sweep if s["recall_at_10"] >= target] or [
                max(sweep, key=lambda s: s["recall_at_10"])
            ]
            best = min(ok, key=lambda s: s["batch_ms_per_query"])
            res["tuned"] = {k: best[k] for k in SWEEP[kind][0]}
            res["sweep_tuning_queries"] = sweep
            index.index_config = dataclasses.replace(cfg, **res["tuned"])
            if cfg.store == "float16" and not big:  # does the float16 store cost recall?
                f32 = dataclasses.replace(index.index_config, store="float32")
                f32_index = RetrievalIndex(
                    emb, ids, labels, ["x"], "bench", index_config=f32, ann_index=index.ann_index
                )
                res["recall_at_10_float32_store"] = _recall(f32_index.search(report_q, K)[1], truth)
                del f32_index
        res["recall_at_10"] = _recall(index.search(report_q, K)[1], truth)
        res.update(_latency(lambda q: index.search(q, K), report_q))
        out[kind] = res
        print(f"[clustered {n}] {kind} {res.get('tuned')} {res['recall_at_10']}", file=sys.stderr)
        index = None  # free the gallery copy before the next kind
    out["peak_rss_gib"] = _rss_gib()
    return out


_BUILD_KEYS = {
    "ivfpq": ("m", "nbits", "kmeans_iters", "train_size", "store"),
    "hnsw": ("hnsw_m", "ef_construction", "store"),
}


def run(quick: bool = False) -> dict:
    """Measures `RetrievalIndex.search` (jitted cosine top-10) on random galleries, then exact
    against IVF-PQ on the clustered mixture (10^5 quick, else 10^6; HNSW and 10^7: the CLI).

    Returns:
      {"dim", "k", "by_gallery": {N: {"p50_ms", "p99_ms", "batch64_queries_per_s"}},
      "clustered": see `clustered`}.
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
    out["clustered"] = clustered(10**5 if quick else 10**6, ("exact", "ivfpq"))
    return out


def main(argv: list[str] | None = None) -> dict:
    """CLI: the random-gallery sweep, or one clustered run written to benchmarks/results/."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clustered", type=int, default=0, help="gallery size (clustered mode)")
    parser.add_argument("--kinds", default="exact,ivfpq,hnsw")
    parser.add_argument("--build", default="", help="IndexConfig overrides: nlist=4096,m=32")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    if not args.clustered:
        res = run(quick=args.quick)
        print(json.dumps(res, indent=2))
        return res
    build = {k: int(v) for k, v in (t.split("=") for t in args.build.split(",") if t)}
    res = clustered(args.clustered, tuple(args.kinds.split(",")), build)
    res["environment"] = {"cpu_count": os.cpu_count(), "date": datetime.date.today().isoformat()}
    out = pathlib.Path(
        args.out
        or ROOT
        / "benchmarks"
        / "results"
        / f"retrieval_clustered_{args.clustered}_{datetime.date.today().isoformat()}.json"
    )
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return res


if __name__ == "__main__":
    main()
