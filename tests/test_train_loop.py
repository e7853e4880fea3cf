"""The shared training loop: resume equals an uninterrupted run, the NaN guard, the logs."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sb3dr_jax.train import NonFiniteError, TrainState, data_parallel, fit, make_step
from sb3dr_jax.train.loop import checkpoint_manager

D, B, F = 8, 2, 5  # devices, per-device batch, features


def _config(**kw) -> ml_collections.ConfigDict:
    c = dict(seed=3, log_every=1, ckpt_every=2, keep_ckpts=2, eval_every=0)
    return ml_collections.ConfigDict({**c, **kw})


def _loss_fn(params, state, batch, rng, consts):
    """Noisy linear regression: uses the rng, so resume must reproduce the keys too."""
    del state
    noise = 0.01 * jax.random.normal(rng, batch["y"].shape)
    pred = batch["x"] @ params["w"] * consts["scale"]  # [b]
    loss = jnp.mean((pred - batch["y"] - noise) ** 2)
    return loss, ({"mse": loss}, {})


def _batches(seed: int = 0, nan_at: int | None = None):
    rs = np.random.RandomState(seed)
    w_true = rs.randn(F).astype(np.float32)
    i = 0
    while True:
        x = rs.randn(D, B, F).astype(np.float32)
        y = x @ w_true
        if nan_at is not None and i == nan_at:
            x[0, 0, 0] = np.nan
        yield {"x": x, "y": y}
        i += 1


def _fit(workdir, total, batches, mode="pmap"):
    opt = optax.adam(0.05)
    state = jax.device_get(TrainState.create({"w": jnp.zeros((F,))}, opt))
    return fit(
        config=_config(),
        workdir=str(workdir),
        dp=data_parallel(mode),
        state=state,
        step_fn=make_step(_loss_fn, opt),
        batches=batches,
        consts={"scale": np.float32(1.0)},
        total_steps=total,
    )


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_kill_and_resume_matches_uninterrupted(tmp_path, mode):
    full = _fit(tmp_path / "full", 6, _batches(), mode)
    part = tmp_path / "part"
    _fit(part, 4, _batches(), mode)  # "killed" after its step-4 checkpoint
    resumed = _fit(part, 6, _batches(), mode)  # a fresh process with the same seed and data
    assert int(resumed.step) == 6
    np.testing.assert_allclose(resumed.params["w"], full.params["w"], rtol=1e-6, atol=1e-7)
    assert int(full.step) == 6 and np.abs(full.params["w"]).max() > 0
    # Resume skipped the finished steps: the log holds steps 1-4 then 5-6, each once.
    steps = [json.loads(line)["step"] for line in open(part / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_metrics_and_checkpoints_written(tmp_path):
    _fit(tmp_path, 5, _batches())
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(r["train/loss"]) for r in rows)
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
    mngr = checkpoint_manager(str(tmp_path), keep=2)
    assert sorted(mngr.all_steps()) == [4, 5]  # keep_ckpts=2, the final step always saved
    mngr.close()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(
        NonFiniteError, match=r"train/loss at step 4.*last good checkpoint is step 2"
    ):
        _fit(tmp_path, 6, _batches(nan_at=3))  # the 4th batch holds a NaN
    mngr = checkpoint_manager(str(tmp_path), keep=2)
    assert mngr.latest_step() == 2  # the non-finite state was never saved
    mngr.close()
