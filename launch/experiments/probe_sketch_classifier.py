"""How well can a sketch encoder classify a dataset's sketches? A fast diagnostic probe.

Trains the student backbone + head with plain cross-entropy on cos(s, teacher class centres) / T
(no triplet, no relational terms) and prints train and test nearest-centre accuracy every 100
steps. The oracle of `launch/diagnose.py` turns that accuracy into the mAP it allows. Used in
docs/retrieval_diagnosis.md (section "what limits the student"):

    python launch/experiments/probe_sketch_classifier.py --teacher workdirs/qd90/pretrain_bcl \
        [--lr 1e-3] [--init_from_teacher 1] [--aug 1] [--lines 0.5] [--steps 600]

`--aug 1`: affine + elastic (2 px) + 2 erased squares (`augment_sketches`); `--lines f`: a share
f of every batch is line-channel views of random shapes, labelled with the shape's class.
Reads the test sketches for the report only (this is a diagnosis, not a tuning loop).
"""

from __future__ import annotations

import argparse
import glob
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--init_from_teacher", type=int, default=1)
    ap.add_argument("--backbone", default="resnet_tiny")
    ap.add_argument("--aug", type=int, default=1)
    ap.add_argument("--lines", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()

    import tensorflow_datasets as tfds

    from sb3dr_jax.data import dataset_from_config
    from sb3dr_jax.data.sketch_sampling import load_sketch_split
    from sb3dr_jax.models import build_model, init_student_from_teacher
    from sb3dr_jax.models.common import centre_and_normalize, l2_normalize
    from sb3dr_jax.objectives.kd import class_centres
    from sb3dr_jax.teacher import load as load_teacher
    from sb3dr_jax.train.augment import augment_sketches
    from sb3dr_jax.train.loop import load_config

    tc = load_config(a.teacher)
    b = dataset_from_config(tc.dataset)
    nc = len(b.info.metadata["class_names"])
    cache = np.load(sorted(glob.glob(f"{a.teacher}/teacher_features_*.npz"))[-1])
    feats, _ = centre_and_normalize(cache["raw"])
    centres = jnp.asarray(class_centres(feats, cache["labels"], nc))
    x_tr, y_tr, _ = load_sketch_split(b, "sketch_train")
    x_te, y_te, _ = load_sketch_split(b, "sketch_test")
    s = x_tr.shape[1]
    model = build_model(
        "sketch_student",
        backbone=a.backbone,
        embed_dim=centres.shape[1],
        hidden=256,
        conv_impl="xla",
    )
    params = model.init(jax.random.key(0), jnp.zeros((1, s, s, 1), jnp.uint8))["params"]
    if a.init_from_teacher:
        chans = list(b.info.metadata["render"]["channels"])
        params = init_student_from_teacher(
            params, load_teacher(a.teacher).params, chans.index("line")
        )
    opt = optax.adamw(a.lr, weight_decay=1e-4)
    state = opt.init(params)

    def loss_fn(p, x, y, key):
        x = x.astype(jnp.float32) / 255.0
        if a.aug:
            x = augment_sketches(key, x, elastic=2.0, erase=2)
        e = l2_normalize(model.apply({"params": p}, x)[0])
        return optax.softmax_cross_entropy_with_integer_labels(e @ centres.T / 0.1, y).mean()

    @jax.jit
    def step(p, st, x, y, key):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y, key)
        u, st = opt.update(g, st, p)
        return optax.apply_updates(p, u), st, loss

    pred = jax.jit(
        lambda p, x: l2_normalize(model.apply({"params": p}, x, train=False)[0]) @ centres.T
    )

    def acc(p, x, y):
        out = [np.asarray(pred(p, x[i : i + 256])).argmax(1) for i in range(0, len(y), 256)]
        return float(np.mean(np.concatenate(out) == y))

    if a.lines:
        line = list(b.info.metadata["render"]["channels"]).index("line")
        views, vlab = [], []
        for ex in tfds.as_numpy(b.as_dataset(split="shapes")):
            views.append(ex["views"][..., line])
            vlab.append(int(ex["label"]))
        views, vlab = np.stack(views)[..., None], np.asarray(vlab)
    rng = np.random.default_rng(0)
    t0 = time.time()
    for i in range(a.steps + 1):
        idx = rng.integers(len(y_tr), size=a.batch)
        xb, yb = x_tr[idx], y_tr[idx]
        if a.lines:
            n = int(a.batch * a.lines)
            si, vi = rng.integers(len(vlab), size=n), rng.integers(views.shape[1], size=n)
            xb = np.concatenate([xb[: a.batch - n], views[si, vi]])
            yb = np.concatenate([yb[: a.batch - n], vlab[si]])
        params, state, loss = step(params, state, xb, yb, jax.random.key(i))
        if i % 100 == 0:
            print(
                f"step {i} loss {float(loss):.3f} train_acc {acc(params, x_tr, y_tr):.3f} "
                f"test_acc {acc(params, x_te, y_te):.3f} ({time.time() - t0:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
