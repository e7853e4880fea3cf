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
from sb3dr_jax.train.loop import checkpoint_manager, read_metrics, write_metrics

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


def _fit(workdir, total, batches, mode="pmap", *, lr=0.05, extra=None, **config):
    opt = optax.adam(lr)
    state = jax.device_get(TrainState.create({"w": jnp.zeros((F,))}, opt, extra))
    return fit(
        config=_config(**config),
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


def test_metrics_and_checkpoints_written(tmp_path, capsys):
    _fit(tmp_path, 5, _batches())
    assert "compiling the step" in capsys.readouterr().out  # says why the first step is slow
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


def _crash_after(batches, n):
    """The first n batches, then the process 'dies' (kill -9 between checkpoints)."""
    for _ in range(n):
        yield next(batches)
    raise KeyboardInterrupt("killed")


def _tb_scalars(workdir) -> list[tuple[int, str]]:
    import tensorflow as tf
    from tensorboard.compat.proto import event_pb2

    out = []
    for name in sorted(os.listdir(workdir)):
        if name.startswith("events.out.tfevents"):
            for r in tf.data.TFRecordDataset(os.path.join(workdir, name)):
                ev = event_pb2.Event.FromString(r.numpy())
                out += [(int(ev.step), v.tag) for v in ev.summary.value]
    return out


def test_resume_after_a_crash_logs_each_step_once(tmp_path):
    """Steps 5 ran and were logged, the process died before the step-6 checkpoint; the resumed
    run redoes step 5 and must not log it twice (issue 19.8)."""
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, 8, _crash_after(_batches(), 5))  # checkpoints 2, 4; steps 1-5 logged
    _fit(tmp_path, 8, _batches())
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == list(range(1, 9))
    tb = [x for x in _tb_scalars(tmp_path) if x[1] == "train/loss"]
    assert sorted(tb) == [(s, "train/loss") for s in range(1, 9)]
    write_metrics(str(tmp_path), 8, {"eval/x": 1.0})
    write_metrics(str(tmp_path), 8, {"eval/x": 2.0})  # a rerun final evaluation
    assert [r.get("eval/x") for r in read_metrics(str(tmp_path)) if r["step"] == 8] == [2.0]
    assert _tb_scalars(tmp_path).count((8, "eval/x")) == 1
    assert sum(1 for line in open(tmp_path / "metrics.jsonl") if "eval/x" in line) == 1


def test_a_diverged_state_is_never_saved(tmp_path):
    """Finite but huge parameters (a huge learning rate) are divergence, not a good state."""
    with pytest.raises(
        NonFiniteError, match=r"diverged params/w .*step 2.*last good checkpoint is step None"
    ):
        _fit(tmp_path, 6, _batches(), lr=1e10)
    mngr = checkpoint_manager(str(tmp_path), keep=2)
    assert mngr.latest_step() is None
    mngr.close()


def test_non_finite_extra_state_is_never_saved(tmp_path):
    """The extras (EMA target, BCL memory...) are checked too, not only the params."""
    extra = {"memory": np.array([0.0, np.nan], np.float32)}
    with pytest.raises(NonFiniteError, match="non-finite extra/memory at step 2"):
        _fit(tmp_path, 4, _batches(), extra=extra)


def test_nan_message_says_how_to_resume_from_an_earlier_checkpoint(tmp_path):
    with pytest.raises(NonFiniteError) as e:
        _fit(tmp_path, 8, _batches(nan_at=6), keep_ckpts=3)  # the 7th batch holds a NaN
    msg = str(e.value)
    assert "last good checkpoint is step 6" in msg and "resumes from it" in msg
    assert "earlier kept checkpoint (2, 4)" in msg and "delete the newer step folders" in msg
