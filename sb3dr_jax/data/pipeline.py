"""tf.data pipelines: device-ready uint8 batches with a leading local-device axis.

- Each process reads its own part of a split (`tfds.split_for_jax_process`) BEFORE any
  shuffling, so hosts never see each other's items.
- Batches are numpy dicts shaped [D, b, ...] (D = local devices, b = per-device batch), the
  layout the pmap/shard_map step expects. Images stay uint8 (4x less host->device traffic);
  normalisation happens on device.
- Evaluation iterates every item exactly once: the last batch is padded with zeros and `mask`
  is False on the padding; every process yields the same number of batches so collective
  programs stay in step across hosts.
- TF never touches an accelerator (it would grab GPU memory that JAX needs).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

tf.config.set_visible_devices([], "GPU")
tf.config.set_visible_devices([], "TPU") if tf.config.list_physical_devices("TPU") else None

SHAPE_KEYS = ("views", "label", "index")
SKETCH_KEYS = ("image", "label", "index")


def _topology() -> tuple[int, int, int]:
    """(process_index, process_count, local_device_count) from JAX."""
    import jax

    return jax.process_index(), jax.process_count(), jax.local_device_count()


def per_device_batch(global_batch: int, process_count: int, local_devices: int) -> int:
    """Splits a global batch over processes and local devices.

    Args:
      global_batch: items per step over all hosts and devices.
      process_count: number of processes (hosts).
      local_devices: devices per process.

    Returns:
      The per-device batch b.

    Raises:
      ValueError: when the global batch does not divide evenly.
    """
    n = process_count * local_devices
    if global_batch <= 0 or global_batch % n:
        raise ValueError(
            f"global_batch={global_batch} must be a positive multiple of "
            f"processes x local devices = {process_count} x {local_devices} = {n}"
        )
    return global_batch // n


def process_split(
    split: str, process_index: int, process_count: int, *, drop_remainder=False
) -> str:
    """The sub-split of `split` that one process reads (even, disjoint, covering).

    Args:
      split: a TFDS split name.
      process_index: this process.
      process_count: all processes.
      drop_remainder: drop the last items so every process reads the same number.

    Returns:
      A TFDS split string such as "shapes[0:55]".
    """
    return tfds.even_splits(split, n=process_count, drop_remainder=drop_remainder)[process_index]


def _options(threads: int) -> tf.data.Options:
    opts = tf.data.Options()
    opts.threading.private_threadpool_size = threads
    opts.threading.max_intra_op_parallelism = 1
    opts.deterministic = True
    return opts


def _read(
    builder, split: str, *, shuffle_files: bool, seed: int, threads: int = 4
) -> tf.data.Dataset:
    pi, pc, _ = _topology()
    ds = builder.as_dataset(
        split=process_split(split, pi, pc),
        shuffle_files=shuffle_files,
        read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False),
    )
    return ds.with_options(_options(threads))


def _static_shapes(builder, keys: tuple[str, ...]):
    meta = builder.info.metadata
    r = meta["render"]
    views = (int(r["num_views"]), int(r["resolution"]), int(r["resolution"]), len(r["channels"]))
    image = (int(meta["sketch_size"]), int(meta["sketch_size"]), 1)

    def fn(ex):
        out = {}
        for k in keys:
            v = ex[k]
            if k == "views":
                v = tf.ensure_shape(v, views)
            elif k == "image":
                v = tf.ensure_shape(v, image)
            else:
                v = tf.cast(v, tf.int32)
            out[k] = v
        return out

    return fn


def _batched(ds: tf.data.Dataset, d: int, b: int) -> Iterator[dict[str, np.ndarray]]:
    ds = ds.batch(d * b, drop_remainder=True).prefetch(2)
    for batch in tfds.as_numpy(ds):
        yield {k: v.reshape((d, b) + v.shape[1:]) for k, v in batch.items()}


def decoded_views_gib(builder, process_count: int = 1) -> float:
    """GiB of uint8 views one process holds when it caches its part of the shapes split.

    Args:
      builder: a prepared builder.
      process_count: processes that split the shapes between them.

    Returns:
      The decoded size in GiB (items x V x H x W x C bytes / processes).
    """
    r = builder.info.metadata["render"]
    per_item = int(r["num_views"]) * int(r["resolution"]) ** 2 * len(r["channels"])
    return builder.info.splits["shapes"].num_examples * per_item / process_count / 2**30


def shape_batches(
    builder,
    *,
    global_batch: int,
    seed: int = 0,
    repeat: bool = True,
    shuffle_buffer: int = 1024,
    cache_gib: float = 0.0,
    threads: int = 4,
) -> Iterator[dict[str, np.ndarray]]:
    """Training batches of shapes for the teacher.

    Args:
      builder: a prepared builder (`sb3dr_jax.data.dataset_from_config`).
      global_batch: shapes per step over all hosts and devices.
      seed: shuffling seed (per process it is offset by the process index).
      repeat: loop forever (training) or stop after one pass.
      shuffle_buffer: tf.data shuffle buffer size.
      cache_gib: keep this process's decoded views in host memory after the first pass when
        they take at most this many GiB (`decoded_views_gib`); 0 decodes every epoch. Inflating
        the zlib records is the pipeline's main cost (benchmarks/input_cores.py), and every
        benchmark set fits: SHREC'14's 8,987 shapes at 128 px are 5.3 GiB.
      threads: tf.data's private thread pool (the host cores the pipeline may use).

    Returns:
      An iterator of {"views": uint8 [D, b, V, H, W, C], "label": int32 [D, b],
      "index": int32 [D, b]}.
    """
    pi, pc, d = _topology()
    b = per_device_batch(global_batch, pc, d)
    ds = _read(builder, "shapes", shuffle_files=True, seed=seed + pi, threads=threads)
    if cache_gib > 0 and decoded_views_gib(builder, pc) <= cache_gib:
        # Before `repeat`: a split in one record file (every dev set) yields the same items
        # in the same order as streaming, so training is unchanged and only decoding stops;
        # with several files the first epoch's file order is kept (the shuffle buffer still
        # reorders the items every epoch).
        ds = ds.cache()
    if repeat:
        ds = ds.repeat()
    ds = ds.shuffle(shuffle_buffer, seed=seed + pi, reshuffle_each_iteration=True)
    ds = ds.map(_static_shapes(builder, SHAPE_KEYS), num_parallel_calls=tf.data.AUTOTUNE)
    return _batched(ds, d, b)


def sketch_batches(
    builder,
    split: str = "sketch_train",
    *,
    global_batch: int,
    seed: int = 0,
    class_balanced: bool = False,
    repeat: bool = True,
    shuffle_buffer: int = 2048,
) -> Iterator[dict[str, np.ndarray]]:
    """Training batches of sketches with their class labels.

    Args:
      builder: a prepared builder.
      split: "sketch_train" or "sketch_test".
      global_batch: sketches per step over all hosts and devices.
      seed: shuffling/sampling seed.
      class_balanced: sample classes uniformly, then items within a class (for long-tailed
        training sets); otherwise items uniformly.
      repeat: loop forever.
      shuffle_buffer: tf.data shuffle buffer size.

    Returns:
      An iterator of {"image": uint8 [D, b, S, S, 1], "label": int32 [D, b], "index": int32 [D, b]}.
    """
    pi, pc, d = _topology()
    b = per_device_batch(global_batch, pc, d)
    ds = _read(builder, split, shuffle_files=True, seed=seed + pi)
    ds = ds.map(_static_shapes(builder, SKETCH_KEYS), num_parallel_calls=tf.data.AUTOTUNE)
    if class_balanced:
        # Per-class streams, each shuffled and repeated, mixed with equal weights. Small sketch
        # splits fit in memory, so cache once before filtering.
        ds = ds.cache()
        labels = sorted({int(x["label"]) for x in tfds.as_numpy(ds)})
        per_class = [
            ds.filter(lambda x, c=c: tf.equal(x["label"], c))
            .shuffle(shuffle_buffer, seed=seed + pi + c)
            .repeat()
            for c in labels
        ]
        ds = tf.data.Dataset.sample_from_datasets(
            per_class, weights=[1.0 / len(labels)] * len(labels), seed=seed + pi
        )
    else:
        if repeat:
            ds = ds.repeat()
        ds = ds.shuffle(shuffle_buffer, seed=seed + pi, reshuffle_each_iteration=True)
    return _batched(ds, d, b)


def eval_batches(builder, split: str, *, global_batch: int) -> Iterator[dict[str, np.ndarray]]:
    """Every item of this process's part of a split, once, padded, with a mask.

    Args:
      builder: a prepared builder.
      split: "shapes", "sketch_train" or "sketch_test".
      global_batch: items per step over all hosts and devices.

    Returns:
      A finite iterator of dicts with the split's keys plus "id" (bytes, b"" on padding) and
      "mask" bool [D, b] (False on padding). Every process yields the same number of batches.
    """
    pi, pc, d = _topology()
    b = per_device_batch(global_batch, pc, d)
    keys = SHAPE_KEYS if split == "shapes" else SKETCH_KEYS
    total = builder.info.splits[split].num_examples
    # The largest per-process part decides how many batches every process yields.
    largest = -(-total // pc)
    num_batches = max(1, -(-largest // (d * b)))
    ds = _read(builder, split, shuffle_files=False, seed=0)
    fn = _static_shapes(builder, keys)
    ds = ds.map(lambda ex: {**fn(ex), "id": ex["id"], "mask": tf.constant(True)})
    spec = ds.element_spec
    pad = tf.data.Dataset.from_tensors(
        {
            k: tf.zeros(s.shape, s.dtype) if s.dtype != tf.string else tf.constant(b"")
            for k, s in spec.items()
        }
    ).repeat()
    ds = ds.concatenate(pad).take(num_batches * d * b)
    return _batched(ds, d, b)
