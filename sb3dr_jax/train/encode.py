"""Encode every item of a split with a data-parallel apply function (no item dropped)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from sb3dr_jax.train.parallel import DataParallel


def encode_split(
    dp: DataParallel, fn: Callable, params, builder, split: str, *, global_batch: int, key: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Embeds a whole split over all devices and hosts.

    Args:
      dp: the data-parallel setup.
      fn: `dp.map_fn` of a per-device `(params, batch) -> embeddings [b, E]`.
      params: replicated params (as the step holds them).
      builder: the prepared dataset.
      split: "shapes", "sketch_train" or "sketch_test".
      global_batch: items per call over all devices and hosts.
      key: the batch key the function reads ("views" or "image").

    Returns:
      (embeddings [n, E] float32, labels [n] int, ids) of every item of the split, the same on
      every process.
    """
    from sb3dr_jax.data.pipeline import eval_batches  # tf.data: only where data is read

    embs, labels, ids, masks = [], [], [], []
    for batch in eval_batches(builder, split, global_batch=global_batch):
        out = fn(params, dp.shard({key: batch[key]}))
        embs.append(dp.gather_outputs(out))
        labels.append(batch["label"].reshape(-1))
        masks.append(batch["mask"].reshape(-1))
        ids.append(batch["id"].reshape(-1))
    emb, lab, mask = np.concatenate(embs), np.concatenate(labels), np.concatenate(masks)
    idv = np.concatenate(ids)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        emb, lab, mask = (
            np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in (emb, lab, mask)
        )
        idv = (
            np.asarray(
                multihost_utils.process_allgather(
                    np.array([s.ljust(32, b"\0")[:32] for s in idv], dtype="S32").view(np.uint8),
                    tiled=True,
                )
            )
            .view("S32")
            .reshape(-1)
        )
    return emb[mask].astype(np.float32), lab[mask], [i.rstrip(b"\0").decode() for i in idv[mask]]


def embed_arrays(
    dp: DataParallel, fn: Callable, params, arrays: np.ndarray, global_batch: int
) -> np.ndarray:
    """Embeds in-memory items (the same array on every process) over all devices and hosts.

    Each global batch is padded to a multiple of the device count (so `fn` compiles once);
    every process embeds its contiguous share on its local devices and the shares are
    gathered, so a large gallery is spread over the whole mesh, as `encode_split` does for a
    dataset split.

    Args:
      dp: the data-parallel setup.
      fn: `dp.map_fn` of a per-device `(params, x [b, ...]) -> embeddings [b, E]`.
      params: replicated params (`dp.replicate`).
      arrays: the items [N, ...], identical on every process.
      global_batch: items per call over all devices and hosts (rounded up to a multiple of
        the device count).

    Returns:
      The embeddings [N, E] float32, the same on every process (an empty [0, 0] array for no
      items).
    """
    pc, pi = jax.process_count(), jax.process_index()
    n_dev, d = dp.num_devices, len(dp.mesh.local_devices)
    batch = -(-int(global_batch) // n_dev) * n_dev
    per = batch // n_dev * d  # this process's rows of each batch
    out = []
    for i in range(0, len(arrays), batch):
        x = arrays[i : i + batch]
        x = np.concatenate([x, np.zeros((batch - len(x),) + x.shape[1:], x.dtype)])
        mine = x[pi * per : (pi + 1) * per].reshape((d, per // d) + x.shape[1:])  # [D, b, ...]
        emb = dp.gather_outputs(fn(params, dp.shard(mine)))  # [per, E]
        if pc > 1:
            from jax.experimental import multihost_utils

            emb = np.asarray(multihost_utils.process_allgather(emb, tiled=True))  # [batch, E]
        out.append(np.asarray(emb, np.float32)[: min(batch, len(arrays) - i)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
