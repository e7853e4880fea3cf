"""In-memory sketch splits: a validation split carved from the training sketches, and samplers.

Sketch splits are small (a few thousand uint8 images), so the student can hold its split in
host memory and choose each batch itself. That makes two things possible that a streaming
shuffle cannot do:

- `carve_validation`: a class-stratified validation split of the TRAINING sketches (fixed seed),
  the split every tuning decision reads (the test queries are never tuned on);
- `pk_batches`: P classes x K sketches per batch, so every anchor of the triplet terms has
  K - 1 same-class sketches in the batch. With 90 classes, ~8 training sketches each and a
  shuffled batch of 32, most anchors have none (`positive_fraction` measures it).

Every sampler yields global index arrays [G]; `device_batches` turns them into the loop's
[D, b, ...] layout for this process's share of the global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

SAMPLERS = ("shuffle", "balanced", "pk")


def load_sketch_split(builder, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every sketch of a split, in the records' order.

    Args:
      builder: a prepared dataset (`sb3dr_jax.data.dataset_from_config`).
      split: "sketch_train" or "sketch_test".

    Returns:
      (images uint8 [N, S, S, 1], labels int32 [N], ids).
    """
    import tensorflow_datasets as tfds

    images, labels, ids = [], [], []
    for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
        images.append(ex["image"])
        labels.append(int(ex["label"]))
        ids.append(ex["id"].decode())
    s = int(builder.info.metadata["sketch_size"])
    if not images:
        return np.zeros((0, s, s, 1), np.uint8), np.zeros((0,), np.int32), []
    return np.stack(images).astype(np.uint8), np.asarray(labels, np.int32), ids


def carve_validation(labels, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Splits item indices into (train, validation), stratified by class, reproducibly.

    Each class gives round(fraction * n) of its n items (at least 1 when fraction > 0 and
    n >= 2) and always keeps at least one item for training.

    Args:
      labels: [N] int classes.
      fraction: share of each class held out, in [0, 1).
      seed: the split's seed (independent of the training seed, so seeds vary the training
        while the validation split stays the same).

    Returns:
      (train indices, validation indices), each sorted int64.

    Raises:
      ValueError: fraction outside [0, 1).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction={fraction} must be in [0, 1)")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = int(round(fraction * len(idx)))
        if fraction > 0 and len(idx) >= 2:
            n_val = max(n_val, 1)
        n_val = min(n_val, len(idx) - 1)
        if n_val > 0:
            val.append(rng.choice(idx, n_val, replace=False))
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros((0,), np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx.astype(np.int64), val_idx.astype(np.int64)


def shuffle_batches(n: int, global_batch: int, seed: int) -> Iterator[np.ndarray]:
    """Epoch-wise reshuffled indices, `global_batch` at a time (epochs run on seamlessly)."""
    rng = np.random.default_rng(seed)
    buf = np.zeros((0,), np.int64)
    while True:
        while len(buf) < global_batch:
            buf = np.concatenate([buf, rng.permutation(n)])
        yield buf[:global_batch]
        buf = buf[global_batch:]


def balanced_batches(labels, global_batch: int, seed: int) -> Iterator[np.ndarray]:
    """Each item: a class drawn uniformly, then one of its items uniformly."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    while True:
        cs = rng.integers(len(classes), size=global_batch)
        yield np.array([members[c][rng.integers(len(members[c]))] for c in cs], np.int64)


def pk_batches(labels, global_batch: int, k: int, seed: int) -> Iterator[np.ndarray]:
    """P x K batches: P = global_batch / K distinct classes, K items of each.

    Classes are visited in reshuffled rounds (every class once per round, so the tail is seen
    as often as the head); a class's items are taken from its own reshuffled queue, so with
    K >= class size each item appears once before any repeats. A class smaller than K repeats
    items within the batch.

    Args:
      labels: [N] int classes.
      global_batch: G, a multiple of k.
      k: items per class.
      seed: the sampler's seed.

    Returns:
      An endless iterator of [G] int64 indices, grouped as P runs of K same-class items.

    Raises:
      ValueError: k < 1, G not a multiple of k, or more classes per batch than classes.
    """
    labels = np.asarray(labels)
    if k < 1 or global_batch % k:
        raise ValueError(f"pk_k={k}: must be >= 1 and divide global_batch={global_batch}")
    classes = np.unique(labels)
    p = global_batch // k
    if p > len(classes):
        raise ValueError(
            f"pk_k={k}: global_batch / pk_k = {p} classes per batch, but only "
            f"{len(classes)} classes have training sketches"
        )
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(labels == c) for c in classes]
    queues: list[list[int]] = [[] for _ in classes]
    order: list[int] = []

    def take(c: int) -> list[int]:
        out = []
        while len(out) < k:
            if not queues[c]:
                queues[c] = list(rng.permutation(members[c]))
            out.append(queues[c].pop())
        return out

    while True:
        picked: list[int] = []
        while len(picked) < p:
            if not order:
                order = list(rng.permutation(len(classes)))
            c = order.pop()
            if c not in picked:
                picked.append(c)
        yield np.array([i for c in picked for i in take(c)], np.int64)


def index_batches(
    labels, *, sampler: str, global_batch: int, seed: int, pk_k: int = 4
) -> Iterator[np.ndarray]:
    """The registry of samplers (`sketch_data.sampler`).

    Args:
      labels: [N] classes of the training items.
      sampler: "shuffle" (epochs of a random permutation), "balanced" (class uniform, then item
        uniform) or "pk" (P classes x K items).
      global_batch: items per step over all devices and hosts.
      seed: the sampler's seed.
      pk_k: K for "pk".

    Returns:
      An endless iterator of [global_batch] indices into `labels`.

    Raises:
      ValueError: unknown sampler (naming the config field).
    """
    if sampler == "shuffle":
        return shuffle_batches(len(labels), global_batch, seed)
    if sampler == "balanced":
        return balanced_batches(labels, global_batch, seed)
    if sampler == "pk":
        return pk_batches(labels, global_batch, pk_k, seed)
    raise ValueError(f"sketch_data.sampler: unknown {sampler!r}; choose from {SAMPLERS}")


def device_batches(
    images: np.ndarray,
    labels: np.ndarray,
    indices: Iterator[np.ndarray],
    *,
    process_index: int = 0,
    process_count: int = 1,
    local_devices: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of each global index batch, in the loop's [D, b, ...] layout.

    Args:
      images: [N, S, S, 1] uint8.
      labels: [N] int.
      indices: global index batches [G] (every process draws the same ones from the same seed).
      process_index: this process.
      process_count: all processes.
      local_devices: D.

    Returns:
      An iterator of {"image": uint8 [D, b, S, S, 1], "label": int32 [D, b],
      "index": int32 [D, b]}.
    """
    for idx in indices:
        g = len(idx)
        per = g // process_count
        mine = idx[process_index * per : (process_index + 1) * per]
        b = per // local_devices
        shape = lambda a: a.reshape((local_devices, b) + a.shape[1:])
        yield {
            "image": shape(images[mine]),
            "label": shape(labels[mine].astype(np.int32)),
            "index": shape(mine.astype(np.int32)),
        }


def positive_fraction(labels, batches: Iterator[np.ndarray], num_batches: int) -> float:
    """Share of anchors that have another item of their class in their batch.

    Args:
      labels: [N] classes.
      batches: index batches (e.g. from `index_batches`).
      num_batches: how many to inspect.

    Returns:
      The fraction of (batch, position) pairs with an in-batch positive (position-wise, so a
      duplicated item counts as its own positive, as the triplet term would treat it).
    """
    labels = np.asarray(labels)
    hits = total = 0
    for _, idx in zip(range(num_batches), batches, strict=False):
        y = labels[idx]
        same = y[:, None] == y[None]
        np.fill_diagonal(same, False)
        hits += int(same.any(1).sum())
        total += len(idx)
    return hits / max(total, 1)


__all__ = [
    "SAMPLERS",
    "balanced_batches",
    "carve_validation",
    "device_batches",
    "index_batches",
    "load_sketch_split",
    "pk_batches",
    "positive_fraction",
    "shuffle_batches",
]
