"""Teacher targets without a teacher forward in the hot loop.

The frozen teacher embeds every shape once (all V views, pooled); the table holds those
descriptors centred on their mean and L2-normalised (see `centre_and_normalize`), with labels,
class centres and ids. The raw descriptors are cached next to the teacher checkpoint as
`teacher_features_<step>_<dataset>.npz` with the params' fingerprint, and rebuilt only when the
checkpoint (or the dataset) changes.
"""

from __future__ import annotations

import hashlib
import os

import jax
import numpy as np

from sb3dr_jax.models.common import centre_and_normalize, l2_normalize


def fingerprint(params) -> str:
    """A short stable hash of a params tree (the teacher's identity for the index)."""
    h = hashlib.sha1()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda t: str(t[0])):
        h.update(str(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return h.hexdigest()[:16]


def class_members(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class shape indices padded to the largest class: ([C, M] int32, counts [C])."""
    counts = np.bincount(labels, minlength=num_classes)
    members = np.zeros((num_classes, max(int(counts.max()), 1)), np.int32)
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        members[c, : len(idx)] = idx
    return members, counts.astype(np.int32)


def teacher_table(teacher_workdir: str, builder, dp, *, global_batch: int) -> dict:
    """Loads (or builds and caches) the teacher feature table for a dataset.

    Args:
      teacher_workdir: the pretrain workdir (checkpoint + config.json).
      builder: the dataset whose shapes are embedded.
      dp: the data-parallel setup.
      global_batch: shapes per encoding call.

    Returns:
      {"features" [N, F], "labels" [N], "centres" [C, F], "members" [C, M], "counts" [C],
       "ids" [N] str, "teacher_id", "step", "model", "params"}.
    """
    from sb3dr_jax.objectives.kd import class_centres
    from sb3dr_jax.pretrain import load_teacher, make_shape_encoder
    from sb3dr_jax.train.encode import encode_split

    model, params, tconfig, step = load_teacher(teacher_workdir)
    tid = fingerprint(params)
    tag = hashlib.sha1(builder.info.full_name.encode()).hexdigest()[:8]
    path = os.path.join(teacher_workdir, f"teacher_features_{step}_{tag}.npz")
    num_classes = len(builder.info.metadata["class_names"])
    cached = np.load(path) if os.path.exists(path) else None
    if cached is not None and "raw" in cached and str(cached["teacher_id"]) == tid:
        raw, labels, ids = cached["raw"], cached["labels"], [str(i) for i in cached["ids"]]
    else:
        fn = make_shape_encoder(dp, model)
        raw, labels, ids = encode_split(
            dp, fn, dp.replicate(params), builder, "shapes", global_batch=global_batch, key="views"
        )
        if jax.process_index() == 0:
            np.savez(path, raw=raw, labels=labels, ids=np.asarray(ids), teacher_id=tid)
    feats, mean = centre_and_normalize(raw)
    centres = np.asarray(class_centres(feats, labels, num_classes))
    members, counts = class_members(labels, num_classes)
    return {
        "features": feats,
        "mean": mean,
        "labels": labels,
        "centres": centres,
        "members": members,
        "counts": counts,
        "ids": ids,
        "teacher_id": tid,
        "step": step,
        "model": model,
        "params": params,
        "config": tconfig,
        "path": path,
    }


def sample_pairs(rng, labels, members, counts):
    """For each sketch label, a random shape index of the same class (on device).

    Args:
      rng: PRNG key.
      labels: [b] sketch classes.
      members: [C, M] per-class shape indices.
      counts: [C] class sizes.

    Returns:
      [b] shape indices (a class without shapes yields index members[c, 0] = 0, masked by the
      caller through `counts`).
    """
    import jax.numpy as jnp

    u = jax.random.uniform(rng, labels.shape)
    j = jnp.minimum((u * counts[labels]).astype(jnp.int32), jnp.maximum(counts[labels] - 1, 0))
    return members[labels, j]


__all__ = ["class_members", "fingerprint", "l2_normalize", "sample_pairs", "teacher_table"]
