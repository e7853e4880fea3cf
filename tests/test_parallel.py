"""1 device vs 8 fake devices, under pmap and shard_map: same loss, same parameters."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from sb3dr_jax import student, teacher
from sb3dr_jax.configs import distill as distill_config
from sb3dr_jax.configs import pretrain as pretrain_config
from sb3dr_jax.train import data_parallel

G, V, H, C = 8, 6, 16, 3  # global batch, views, view size, channels
N, K = 12, 3  # shapes, classes


def _run(dp, step_fn, state, batches, consts):
    """Runs the steps on `dp`; returns (losses, host params)."""
    pstep = dp.step(step_fn)
    dstate, dconsts = dp.replicate(state), dp.replicate(consts)
    rng, d = jax.random.key(0), dp.num_devices
    losses = []
    for batch in batches:
        local = jax.tree_util.tree_map(lambda x: x.reshape((d, -1) + x.shape[1:]), batch)
        dstate, metrics = pstep(dstate, dp.shard(local), rng, dconsts)
        losses.append(dp.first(metrics)["loss"])
    return np.asarray(losses), dp.unreplicate(dstate).params


def _compare(mode, step_fn, state, batches, consts):
    one = _run(data_parallel(mode, jax.devices()[:1]), step_fn, state, batches, consts)
    eight = _run(data_parallel(mode), step_fn, state, batches, consts)
    assert jax.device_count() == 8
    np.testing.assert_allclose(eight[0], one[0], rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(one[0]))
    for a, b in zip(jax.tree_util.tree_leaves(one[1]), jax.tree_util.tree_leaves(eight[1])):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)
    # The step really trained: parameters moved away from the initial ones.
    moved = [
        np.abs(np.asarray(a) - np.asarray(b)).max()
        for a, b in zip(jax.tree_util.tree_leaves(one[1]), jax.tree_util.tree_leaves(state.params))
    ]
    assert max(moved) > 0


def _teacher_setup(longtail: str = "bcl"):
    config = pretrain_config.get_config("smoke")
    config.longtail.method = longtail
    config.total_steps = 4
    rs = np.random.RandomState(0)
    batches = [
        {
            "views": rs.randint(0, 255, (G, V, H, H, C)).astype(np.uint8),
            "label": rs.randint(0, K, (G,)).astype(np.int32),
            "index": rs.permutation(N)[:G].astype(np.int32),
        }
        for _ in range(2)
    ]
    exp = teacher.build(
        config, example_views=batches[0]["views"][:1], num_shapes=N, num_views=V, steps_per_epoch=1
    )
    return exp.step, exp.state, batches


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_teacher_step_device_count_invariant(mode):
    step, state, batches = _teacher_setup("bcl")
    _compare(mode, step, state, batches, {})


def test_teacher_bcl_memory_replicated_and_updated():
    step, state, batches = _teacher_setup("bcl")
    dp = data_parallel("pmap")
    pstep = dp.step(step)
    dstate = dp.replicate(state)
    local = jax.tree_util.tree_map(lambda x: x.reshape((8, -1) + x.shape[1:]), batches[0])
    dstate, _ = pstep(dstate, local, jax.random.key(0), dp.replicate({}))
    mem = np.asarray(dstate.extra["memory"])  # [D, N]
    np.testing.assert_array_equal(mem, np.broadcast_to(mem[0], mem.shape))
    seen = np.zeros(N, bool)
    seen[batches[0]["index"]] = True
    # steps_per_epoch=1: the epoch's losses were folded into the memory of the seen shapes only.
    assert np.all(mem[0][seen] > 0) and np.all(mem[0][~seen] == 0)


def _distill_setup():
    config = distill_config.get_config("smoke")
    config.total_steps = 4
    tconfig = pretrain_config.get_config("smoke")
    t = teacher.untrained(tconfig, np.zeros((1, V, H, H, C), np.uint8))
    table = student.random_table(t, N, K)
    rs = np.random.RandomState(1)
    s = 32
    exp = student.build(config, table, sketch_size=s, view_channels=("depth", "shade", "line"))
    batches = [
        {
            "image": rs.randint(0, 255, (G, s, s, 1)).astype(np.uint8),
            "label": np.tile(np.arange(K), G)[:G].astype(np.int32),
            "index": np.arange(G, dtype=np.int32),
        }
        for _ in range(2)
    ]
    return exp.step, exp.state, batches, exp.consts


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_distill_step_device_count_invariant(mode):
    step, state, batches, consts = _distill_setup()
    _compare(mode, step, state, batches, consts)


def test_unknown_parallel_mode():
    with pytest.raises(ValueError, match="parallel"):
        data_parallel("dp")


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_embed_arrays_spreads_over_devices_and_keeps_every_row(mode):
    from sb3dr_jax.train.encode import embed_arrays

    x = np.arange(13 * 2 * 3, dtype=np.float32).reshape(13, 2, 3)  # 13 items: a ragged tail
    w = np.linspace(-1.0, 1.0, 6 * 4, dtype=np.float32).reshape(6, 4)
    seen = []

    def per_device(p, b):  # [b, 2, 3] -> [b, 4]
        seen.append(b.shape[0])  # traced once per compile: the per-device batch
        return b.reshape(b.shape[0], -1) @ p

    dp = data_parallel(mode)
    out = embed_arrays(dp, dp.map_fn(per_device), dp.replicate(w), x, global_batch=12)
    chex.assert_shape(out, (13, 4))
    np.testing.assert_allclose(out, x.reshape(13, -1) @ w, rtol=1e-6)
    assert seen == [2]  # 12 rounded up to 16 over 8 devices: one compile, 2 items each
    empty = embed_arrays(dp, dp.map_fn(per_device), dp.replicate(w), x[:0], global_batch=12)
    assert empty.shape == (0, 0)
