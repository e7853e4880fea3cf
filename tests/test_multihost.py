"""Two processes on 127.0.0.1 (gloo collectives on CPU) run 2 teacher steps together."""

import os
import pathlib
import socket
import subprocess
import sys

import pytest

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_two_processes_hold_identical_parameters(tmp_path, smoke_data_dir, mode):
    port = _free_port()
    env = {**os.environ, "SB3DR_PARALLEL": mode, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                str(port),
                str(i),
                str(tmp_path / "wd"),
                smoke_data_dir,
                str(tmp_path / f"out{i}.txt"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    outs = [(tmp_path / f"out{i}.txt").read_text().split() for i in range(2)]
    assert outs[0][:2] == ["2", "2"]  # 2 processes, 2 devices in total
    assert outs[0][2] == outs[1][2]  # identical parameters on both hosts
    assert outs[0][3] == outs[1][3] == "True"  # embed_arrays: every row, on both hosts
    assert (tmp_path / "wd" / "checkpoints").is_dir()
    assert (tmp_path / "wd" / "metrics.jsonl").exists()  # written by process 0 only
