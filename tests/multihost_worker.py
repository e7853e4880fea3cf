"""One process of the two-process CPU test (see test_multihost.py): 2 teacher steps."""

import os
import sys

port, pid, workdir, data_dir, out = sys.argv[1:6]
os.environ["XLA_FLAGS"] = ""  # one CPU device per process
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=int(pid)
)

from sb3dr_jax import pretrain  # noqa: E402
from sb3dr_jax.configs.pretrain import get_config  # noqa: E402
from sb3dr_jax.teacher import fingerprint  # noqa: E402

cfg = get_config("smoke")
cfg.dataset.data_dir = data_dir
cfg.parallel = os.environ.get("SB3DR_PARALLEL", "pmap")
state = pretrain.run(cfg, workdir)
with open(out, "w") as f:
    f.write(f"{jax.process_count()} {jax.device_count()} {fingerprint(state.params)}\n")
