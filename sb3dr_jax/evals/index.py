"""The retrieval index: L2-normalised shape embeddings, their ids and labels, and top-k search.

Saved as `index.npz` (arrays) + `index.json` (format version, encoder identity, class names,
counts, metadata). `encoder_id` names the model that embedded the gallery (the teacher's
fingerprint): a query encoder distilled against another teacher lives in another space, so
loading with a different expected id is refused.

Search is a jitted cosine top-k over a gallery split into shards: per shard `lax.top_k`, then a
merge of the shard candidates. With several devices the shards live on different devices
(`shard_map` over a `Mesh(('data',))`), so galleries larger than one device's memory work;
queries go in fixed-size padded batches, so the search compiles once. Each bit-distinct gallery
vector is scored once and its copies share that score (`metrics.distinct_rows`), so equal
vectors tie exactly and come back in gallery order, whatever the matmul kernel's blocking.

Large galleries: with an `IndexConfig` (`export.index`/`export.ann.*`, sb3dr_jax.evals.ann)
that resolves to an ANN kind (IVF-PQ or HNSW, FAISS), the embeddings are stored unit-norm in
`export.ann.store` (float16 by default) without the distinct-row grouping, the FAISS index
proposes `max(k, rerank)` candidates and they are re-scored exactly. `save` then also writes
`index.faiss`, whose SHA-256 and kind `index.json` records; `load` refuses a file that differs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sb3dr_jax.evals import ann
from sb3dr_jax.evals.metrics import check_finite, distinct_rows

FORMAT_VERSION = 1
ANN_FILE = "index.faiss"


class IndexMismatchError(ValueError):
    """An index that does not belong to the query encoder, or is malformed."""


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _expand_ties(scores, rows, members, starts, counts, k: int):
    """Top-k gallery items from the top-k distinct rows: each row stands for its copies.

    Args:
      scores: [Q, ku] scores of the best distinct rows (ku = min(k, U)).
      rows: [Q, ku] their distinct-row indices.
      members: [N] gallery indices grouped by distinct row, ascending within a row.
      starts: [U] where each row's group starts in `members`; counts: [U] its size.
      k: results per query.

    Returns:
      (scores [Q, k], gallery indices [Q, k]) by score, ties to the lower gallery index. The
      top-k distinct rows hold every top-k item: a row ranked before another item's row holds
      an item ranked before it.
    """
    m = min(k, int(counts.max()))
    j = np.arange(m)
    valid = j < counts[rows][..., None]  # [Q, ku, m]
    pos = np.minimum(starts[rows][..., None] + j, len(members) - 1)
    idx = np.where(valid, members[pos], len(members)).reshape(len(rows), -1)
    s = np.where(valid, scores[..., None], -np.inf).reshape(len(rows), -1)
    order = np.lexsort((idx, -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(idx, order, 1)


@functools.partial(jax.jit, static_argnames=("k",))
def _topk_single(queries, gallery, valid, k):
    scores = jnp.where(valid[None], queries @ gallery.T, -jnp.inf)  # [Q, N]
    return jax.lax.top_k(scores, k)


def sharded_topk(queries: np.ndarray, gallery: np.ndarray, k: int, devices=None):
    """Cosine top-k with the gallery split across devices: per-shard top-k, then a merge.

    Args:
      queries: [Q, E] unit-norm queries.
      gallery: [N, E] unit-norm gallery.
      k: results per query (<= N).
      devices: devices to shard over (default: all local devices).

    Returns:
      (scores [Q, k], indices [Q, k]) sorted by score, ties to the lower index.
    """
    devices = list(devices or jax.local_devices())
    n_dev = len(devices)
    n = gallery.shape[0]
    per = -(-n // n_dev)
    kk = min(k, per)
    pad = per * n_dev - n
    g = np.concatenate([gallery, np.zeros((pad, gallery.shape[1]), gallery.dtype)])
    valid = np.arange(per * n_dev) < n
    mesh = Mesh(np.asarray(devices), ("data",))

    def local(q, g_shard, v_shard):
        s, i = jax.lax.top_k(jnp.where(v_shard[None], q @ g_shard.T, -jnp.inf), kk)
        offset = jax.lax.axis_index("data") * per
        return s[None], (i + offset)[None]  # [1, Q, kk] per shard

    fn = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P(), P("data"), P("data")),
            out_specs=(P("data"), P("data")),
            check_vma=False,
        )
    )
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
    s, i = fn(put(queries, P()), put(g, P("data")), put(valid, P("data")))  # [S, Q, kk]
    s = np.moveaxis(np.asarray(s), 0, 1).reshape(queries.shape[0], -1)
    i = np.moveaxis(np.asarray(i), 0, 1).reshape(queries.shape[0], -1)
    # Merge: by score descending, then index ascending (lexsort's last key is primary).
    order = np.lexsort((i, -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


@dataclasses.dataclass
class RetrievalIndex:
    """A searchable gallery of shape embeddings."""

    embeddings: np.ndarray  # [N, E] float32, L2-normalised
    model_ids: list[str]
    labels: np.ndarray  # [N] int
    class_names: list[str]
    encoder_id: str
    metadata: dict = dataclasses.field(default_factory=dict)
    query_batch: int = 64
    num_shards: int = 1
    # Exact or ANN search (None: exact, as before); see sb3dr_jax.evals.ann.IndexConfig.
    index_config: ann.IndexConfig | None = None
    # A prebuilt FAISS index over `embeddings` (what `load` passes); None: built here if needed.
    ann_index: object | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, np.int64)
        self.model_ids = [str(m) for m in self.model_ids]
        emb = np.asarray(self.embeddings)
        n = len(emb)
        if n == 0 or emb.ndim != 2:
            raise ValueError("RetrievalIndex: empty gallery (no shape embeddings)")
        ids = self.model_ids if len(self.model_ids) == n else None
        if len(self.model_ids) != n or len(self.labels) != n:
            raise IndexMismatchError(
                f"RetrievalIndex: {n} embeddings but {len(self.model_ids)} ids and "
                f"{len(self.labels)} labels"
            )
        self.kind = "exact" if self.index_config is None else self.index_config.resolve(n)
        if self.kind != "exact":
            self._init_ann(emb, ids)
            return
        self.ann_index = None
        check_finite(emb, "gallery item", ids)
        # One normalised row per distinct vector: copies stay bit-identical (ties are kept).
        rows, inverse = distinct_rows(emb)
        self._rows = _unit(rows)  # [U, E]
        self.embeddings = self._rows if len(rows) == n else self._rows[inverse]
        self._members = np.argsort(inverse, kind="stable")  # [N] grouped by distinct row
        self._counts = np.bincount(inverse, minlength=len(rows))
        self._starts = np.cumsum(self._counts) - self._counts

    def _init_ann(self, emb: np.ndarray, ids) -> None:
        """ANN path: unit-norm store (chunked: no full float32 copy), FAISS index built or given."""
        for s in range(0, len(emb), ann.CHUNK):  # chunked: a whole-gallery isfinite is N x E
            if not np.isfinite(emb[s : s + ann.CHUNK]).all():
                check_finite(emb, "gallery item", ids)
        self.embeddings = ann.unit_store(emb, self.index_config.store)
        if self.ann_index is None:
            self.ann_index = ann.build(self.kind, self.embeddings, self.index_config)
        elif self.ann_index.ntotal != len(emb) or self.ann_index.d != emb.shape[1]:
            raise IndexMismatchError(
                f"RetrievalIndex: the {self.kind} index holds {self.ann_index.ntotal} x "
                f"{self.ann_index.d} vectors, the gallery {len(emb)} x {emb.shape[1]}"
            )

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k gallery items by cosine similarity.

        Args:
          queries: [Q, E] (or [E]) query embeddings (normalised here).
          k: results per query (clipped to the gallery size).

        Returns:
          (scores [Q, k] cosine similarities, indices [Q, k] into the gallery).

        Raises:
          ValueError: queries of the wrong dimensionality.
        """
        q = np.asarray(queries, np.float32)
        q = q[None] if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query embeddings must be [Q, {self.dim}], got {list(q.shape)}")
        check_finite(q, "query")
        k = min(int(k), len(self.embeddings))
        if self.kind != "exact":
            return self._search_ann(_unit(q), k)
        ku = min(k, len(self._rows))  # the top-k distinct rows hold the top-k items
        q = _unit(q)
        if self.num_shards > 1:
            devs = jax.local_devices()[: self.num_shards]
            s, i = sharded_topk(q, self._rows, ku, devs)
        else:
            out_s, out_i = [], []
            if getattr(self, "_device", None) is None:  # upload the gallery once, not per search
                self._device = (jnp.asarray(self._rows), jnp.ones(len(self._rows), bool))
            g, valid = self._device
            for start in range(0, len(q), self.query_batch):
                chunk = q[start : start + self.query_batch]
                padded = np.zeros((self.query_batch, self.dim), np.float32)
                padded[: len(chunk)] = chunk
                s, i = _topk_single(jnp.asarray(padded), g, valid, ku)
                out_s.append(np.asarray(s)[: len(chunk)])
                out_i.append(np.asarray(i)[: len(chunk)])
            s, i = np.concatenate(out_s), np.concatenate(out_i)
        if len(self._rows) == len(self.embeddings):  # no copies: distinct row = gallery item
            return s, i
        return _expand_ties(s, i, self._members, self._starts, self._counts, k)

    def _search_ann(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """ANN candidates [Q, max(k, rerank)], re-scored exactly; exact scan where < k came."""
        n_cand = min(max(k, self.index_config.rerank), len(self.embeddings))
        cand = ann.candidates(self.ann_index, q, n_cand, self.index_config)
        s, i = ann.rerank(q, self.embeddings, cand, k)
        short = np.flatnonzero((i < 0).any(axis=1))  # too few lists probed for k results
        if len(short):
            s[short], i[short] = ann.exact_topk(q[short], self.embeddings, k)
        return s, i

    def save(self, directory: str | os.PathLike) -> None:
        """Writes `index.npz` and `index.json` into `directory`."""
        d = pathlib.Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        np.savez(
            d / "index.npz",
            embeddings=self.embeddings,
            labels=self.labels,
            model_ids=np.asarray(self.model_ids),
        )
        meta = {
            "format_version": FORMAT_VERSION,
            "encoder_id": self.encoder_id,
            "class_names": self.class_names,
            "num_items": len(self.model_ids),
            "dim": self.dim,
            "metadata": self.metadata,
        }
        if self.kind != "exact":
            ann.import_faiss().write_index(self.ann_index, str(d / ANN_FILE))
            meta["ann"] = {
                "kind": self.kind,
                "file": ANN_FILE,
                "sha256": _sha256(d / ANN_FILE),
                "config": self.index_config.to_dict(),
            }
        elif (d / ANN_FILE).exists():  # a stale ANN file from an earlier export
            (d / ANN_FILE).unlink()
        (d / "index.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(
        cls, directory: str | os.PathLike, expected_encoder_id: str | None = None
    ) -> RetrievalIndex:
        """Reads an index, refusing one built by another encoder or in an unknown format.

        Args:
          directory: the folder holding `index.npz` and `index.json`.
          expected_encoder_id: the identity the caller's query encoder was trained against.

        Returns:
          The index.

        Raises:
          IndexMismatchError: wrong encoder, unknown format version or inconsistent sizes.
          FileNotFoundError: missing files.
        """
        d = pathlib.Path(directory)
        meta_path = d / "index.json"
        if not meta_path.exists() or not (d / "index.npz").exists():
            raise FileNotFoundError(f"{d}: no index.json/index.npz")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise IndexMismatchError(
                f"{meta_path}: format version {meta.get('format_version')} is not {FORMAT_VERSION}"
            )
        if expected_encoder_id is not None and meta["encoder_id"] != expected_encoder_id:
            raise IndexMismatchError(
                f"{meta_path}: index built by encoder {meta['encoder_id']!r}, but the query "
                f"encoder belongs to {expected_encoder_id!r}"
            )
        arr = np.load(d / "index.npz")
        if len(arr["embeddings"]) != meta["num_items"]:
            raise IndexMismatchError(
                f"{meta_path}: num_items {meta['num_items']} but "
                f"{len(arr['embeddings'])} embeddings"
            )
        config, ann_index = None, None
        if "ann" in meta:
            path = d / meta["ann"]["file"]
            if not path.exists():
                raise FileNotFoundError(f"{meta_path}: names {path.name}, which is missing")
            if _sha256(path) != meta["ann"]["sha256"]:
                raise IndexMismatchError(
                    f"{path}: SHA-256 differs from the one {meta_path} records (an index.faiss "
                    "of another export?)"
                )
            config = ann.IndexConfig(**meta["ann"]["config"])
            ann_index = ann.import_faiss().read_index(str(path))
        return cls(
            arr["embeddings"],
            [str(x) for x in arr["model_ids"]],
            arr["labels"],
            meta["class_names"],
            meta["encoder_id"],
            meta.get("metadata", {}),
            index_config=config,
            ann_index=ann_index,
        )


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()
