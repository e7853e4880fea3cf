"""Approximate nearest-neighbour (FAISS) indexes for large galleries, with exact re-ranking.

`IndexConfig` is the `export.index` / `export.ann.*` block: `export.index` picks the search
("exact", "ivfpq", "hnsw", or "auto": exact below `export.ann.auto_threshold` items, the
`export.ann.auto_kind` ANN index from there on). An ANN index proposes `max(k, rerank)`
candidates per query; they are re-scored exactly (cosine against the stored unit embeddings)
and sorted by score, ties to the lower gallery index. Vectors are unit-norm, so FAISS's L2
ranking is the cosine ranking.

FAISS is imported lazily: the exact path needs nothing beyond the base install.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from sb3dr_jax.configs.common import ConfigError
from sb3dr_jax.registry import Registry

# Rows per FAISS add / normalisation / exact-scan chunk: 2^16 x 256 float32 is 64 MiB.
CHUNK = 1 << 16


def import_faiss():
    """The `faiss` module, or an ImportError saying how to install it."""
    try:
        import faiss
    except ImportError as e:
        raise ImportError(
            "export.index: the ANN indexes need FAISS; install it with "
            "`pip install 'sb3dr_jax[ann]'` (faiss-cpu), or set export.index=exact"
        ) from e
    return faiss


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """Which search a `RetrievalIndex` uses, and the ANN parameters (`export.ann.*`)."""

    index: str = "auto"  # exact | ivfpq | hnsw | auto
    auto_threshold: int = 1_000_000  # auto: exact below this many items, ANN from here on
    auto_kind: str = "ivfpq"  # the ANN index auto picks
    nlist: int = 0  # IVF lists; 0: 4 sqrt(N) rounded to a power of two (at most N / 39)
    m: int = 32  # PQ sub-quantisers (must divide the embedding size)
    nbits: int = 8  # bits per PQ code
    nprobe: int = 16  # IVF lists scanned per query (of 4096: recall@10 0.96-0.97, see README)
    train_size: int = 0  # IVF/PQ training sample; 0: 40 per list (at least 10,000), at most N
    kmeans_iters: int = 10  # k-means iterations of the coarse quantiser
    hnsw_m: int = 32  # HNSW graph degree
    ef_construction: int = 80
    ef_search: int = 128
    # ANN candidates re-scored exactly (at least k are). 30 tops out at recall@10 0.91-0.94
    # with PQ32 on the clustered benchmark, whatever nprobe; 100 reaches 0.96-0.98.
    rerank: int = 100
    store: str = "float16"  # dtype of the stored embeddings on the ANN path: float16 | float32

    def __post_init__(self):
        KINDS.get(self.index)
        if self.auto_kind not in ANN_BUILDERS:
            raise ConfigError(
                f"export.ann.auto_kind: unknown {self.auto_kind!r}; choose from "
                f"{ANN_BUILDERS.names()}"
            )
        if self.store not in ("float16", "float32"):
            raise ConfigError(
                f"export.ann.store: unknown {self.store!r}; choose from ['float16', 'float32']"
            )
        positive = ("auto_threshold", "m", "nprobe", "kmeans_iters", "hnsw_m")
        positive += ("ef_construction", "ef_search", "rerank")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"export.ann.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("nlist", "train_size"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(
                    f"export.ann.{name}: must be >= 0 (0: automatic), got {getattr(self, name)}"
                )
        if not 1 <= self.nbits <= 16:
            raise ConfigError(f"export.ann.nbits: must be in [1, 16], got {self.nbits}")

    @classmethod
    def from_config(cls, export: Any) -> IndexConfig:
        """Builds the config from an `export` ConfigDict (`export.index`, `export.ann.*`).

        Args:
          export: the `config.export` block (missing fields keep their defaults).

        Returns:
          The validated IndexConfig.

        Raises:
          ConfigError: an unknown name or an out-of-range value (the message names the field).
        """
        kw: dict[str, Any] = {}
        if "index" in export:
            kw["index"] = str(export["index"])
        ann = export["ann"] if "ann" in export else {}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in ann:
            if key not in fields or key == "index":
                raise ConfigError(
                    f"export.ann.{key}: unknown field; choose from "
                    f"{sorted(k for k in fields if k != 'index')}"
                )
            kind = type(fields[key].default)
            try:
                kw[key] = kind(ann[key])
            except (TypeError, ValueError) as e:
                raise ConfigError(f"export.ann.{key}: expected {kind.__name__}: {e}") from e
        return cls(**kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolve(self, n: int) -> str:
        """The search used for a gallery of `n` items: "exact" or an ANN kind."""
        if self.index == "auto":
            return "exact" if n < self.auto_threshold else self.auto_kind
        return self.index


def ann_defaults() -> dict:
    """The `export.ann` block's defaults (every IndexConfig field but `index`)."""
    return {k: v for k, v in IndexConfig().to_dict().items() if k != "index"}


def default_nlist(n: int) -> int:
    """4 sqrt(N) rounded to a power of two, kept to >= 39 training points per list."""
    nl = 2 ** round(math.log2(max(4 * math.sqrt(n), 1)))
    return int(max(1, min(nl, n // 39)))


def _train_sample(vectors: np.ndarray, size: int) -> np.ndarray:
    """`size` rows drawn without replacement (sorted, so the read is sequential): float32."""
    n = len(vectors)
    if size >= n:
        return np.ascontiguousarray(vectors, np.float32)
    rows = np.sort(np.random.default_rng(0).choice(n, size, replace=False))
    return np.ascontiguousarray(vectors[rows], np.float32)


def _add_chunked(index, vectors: np.ndarray) -> None:
    for s in range(0, len(vectors), CHUNK):
        index.add(np.ascontiguousarray(vectors[s : s + CHUNK], np.float32))


def _build_ivfpq(vectors: np.ndarray, cfg: IndexConfig):
    faiss = import_faiss()
    n, d = vectors.shape
    if d % cfg.m:
        raise ConfigError(f"export.ann.m: {cfg.m} does not divide the embedding size {d}")
    nlist = cfg.nlist or default_nlist(n)
    train = cfg.train_size or max(10_000, 40 * nlist)
    if min(train, n) < max(nlist, 2**cfg.nbits):
        raise ConfigError(
            f"export.ann.nlist/nbits: {n} items cannot train {nlist} lists and "
            f"{2**cfg.nbits} PQ centroids; use export.index=exact (or auto) for this gallery"
        )
    sample = _train_sample(vectors, train)
    # k-means on the sample, then an HNSW graph over the centroids as the coarse quantiser:
    # assigning 10^7 items to 4096 lists by brute force is 21 TFLOP, through the graph ~1%.
    km = faiss.Kmeans(d, nlist, niter=cfg.kmeans_iters, seed=0)
    km.train(sample)
    quantizer = faiss.IndexHNSWFlat(d, 32)
    quantizer.add(km.centroids)
    index = faiss.IndexIVFPQ(quantizer, d, nlist, cfg.m, cfg.nbits)
    index.train(sample)  # the quantiser is complete: this trains the PQ on the residuals
    _add_chunked(index, vectors)
    return index


def _build_hnsw(vectors: np.ndarray, cfg: IndexConfig):
    faiss = import_faiss()
    index = faiss.IndexHNSWFlat(vectors.shape[1], cfg.hnsw_m)
    index.hnsw.efConstruction = cfg.ef_construction
    _add_chunked(index, vectors)
    return index


# The FAISS index builders, and every export.index name (what each one searches with).
ANN_BUILDERS: Registry[Any] = Registry("export.ann.auto_kind")
ANN_BUILDERS.register("ivfpq", _build_ivfpq)
ANN_BUILDERS.register("hnsw", _build_hnsw)
KINDS: Registry[str] = Registry("export.index")
KINDS.register("exact", "sharded exact cosine top-k (sb3dr_jax.evals.index)")
KINDS.register("auto", "exact below export.ann.auto_threshold items, export.ann.auto_kind above")
KINDS.register("ivfpq", "FAISS IVF lists + product quantisation, exact re-ranking")
KINDS.register("hnsw", "FAISS HNSW graph, exact re-ranking")


def build(kind: str, vectors: np.ndarray, cfg: IndexConfig):
    """Builds the FAISS index `kind` over unit-norm `vectors` [N, E] (added in chunks).

    Args:
      kind: "ivfpq" or "hnsw".
      vectors: [N, E] unit-norm embeddings (float16 or float32; converted chunk by chunk).
      cfg: the ANN parameters.

    Returns:
      A `faiss.Index` holding all N vectors, ids 0..N-1.
    """
    return ANN_BUILDERS.get(kind)(vectors, cfg)


def candidates(index, queries: np.ndarray, n_cand: int, cfg: IndexConfig) -> np.ndarray:
    """The ANN index's `n_cand` best gallery rows per query: [Q, n_cand] int64 (-1: none)."""
    faiss = import_faiss()
    if isinstance(index, faiss.IndexIVF):
        index.nprobe = min(cfg.nprobe, index.nlist)
        quantizer = faiss.downcast_index(index.quantizer)
        if hasattr(quantizer, "hnsw"):  # the graph must return nprobe lists, accurately
            quantizer.hnsw.efSearch = max(64, 2 * index.nprobe)
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = max(cfg.ef_search, n_cand)
    _, ids = index.search(np.ascontiguousarray(queries, np.float32), n_cand)
    return ids


def rerank(queries: np.ndarray, store: np.ndarray, cand: np.ndarray, k: int):
    """Exact cosine scores of the candidates, best k first (ties to the lower gallery index).

    Args:
      queries: [Q, E] unit-norm float32 queries.
      store: [N, E] unit-norm gallery embeddings.
      cand: [Q, R] candidate gallery rows (-1: no candidate), R >= k.
      k: results per query.

    Returns:
      (scores [Q, k] float32, indices [Q, k] int64); a missing candidate scores -inf, index -1.
    """
    valid = cand >= 0
    vec = store[np.where(valid, cand, 0)].astype(np.float32)  # [Q, R, E]
    s = np.einsum("qe,qre->qr", queries.astype(np.float32), vec)
    s = np.where(valid, s, -np.inf).astype(np.float32)
    key = np.where(valid, cand, np.iinfo(np.int64).max)
    order = np.lexsort((key, -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(cand, order, 1)


def exact_topk(queries: np.ndarray, store: np.ndarray, k: int, chunk: int = CHUNK * 4):
    """Exact cosine top-k by a chunked matmul over `store` (any float dtype, no full copy).

    Args:
      queries: [Q, E] unit-norm float32 queries.
      store: [N, E] unit-norm gallery embeddings.
      k: results per query (<= N).
      chunk: gallery rows scored at once.

    Returns:
      (scores [Q, k], indices [Q, k]) by score, ties to the lower index.
    """
    q = np.asarray(queries, np.float32)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for s0 in range(0, len(store), chunk):
        g = np.asarray(store[s0 : s0 + chunk], np.float32)
        sc = q @ g.T  # [Q, chunk]
        kk = min(k, sc.shape[1])
        part = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], 1)
        best_i = np.concatenate([best_i, part + s0], 1)
        order = np.lexsort((best_i, -best_s), axis=1)[:, :k]
        best_s = np.take_along_axis(best_s, order, 1)
        best_i = np.take_along_axis(best_i, order, 1)
    return best_s, best_i


def unit_store(emb: np.ndarray, dtype: str) -> np.ndarray:
    """`emb` [N, E] L2-normalised in `dtype`, chunk by chunk; `emb` itself when it already is.

    A 10^7 x 256 gallery is 5 GB in float16: normalising it whole would need 10 GB more.

    Returns:
      [N, E] unit-norm rows of dtype `dtype` (non-finite rows are left to the caller's check).
    """
    dt = np.dtype(dtype)
    if emb.dtype == dt:
        ok = True
        for s in range(0, len(emb), CHUNK):
            norm = np.linalg.norm(np.asarray(emb[s : s + CHUNK], np.float32), axis=1)
            if not np.all(np.abs(norm - 1) < 1e-3):
                ok = False
                break
        if ok:
            return emb
    out = np.empty(emb.shape, dt)
    for s in range(0, len(emb), CHUNK):
        x = np.asarray(emb[s : s + CHUNK], np.float32)
        out[s : s + CHUNK] = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return out


def index_bytes(index) -> int:
    """Size of the FAISS index once serialised (its memory footprint, to a few percent)."""
    return int(import_faiss().serialize_index(index).nbytes)
