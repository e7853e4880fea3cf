"""One process of the two-process CPU test (see test_multihost.py): 2 teacher steps, then
an in-memory embedding spread over both hosts."""

import os
import sys

port, pid, workdir, data_dir, out = sys.argv[1:6]
os.environ["XLA_FLAGS"] = ""  # one CPU device per process
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=int(pid)
)

import numpy as np  # noqa: E402

from sb3dr_jax import pretrain  # noqa: E402
from sb3dr_jax.configs.pretrain import get_config  # noqa: E402
from sb3dr_jax.teacher import fingerprint  # noqa: E402
from sb3dr_jax.train import data_parallel  # noqa: E402
from sb3dr_jax.train.encode import embed_arrays  # noqa: E402

cfg = get_config("smoke")
cfg.dataset.data_dir = data_dir
cfg.parallel = os.environ.get("SB3DR_PARALLEL", "pmap")
state = pretrain.run(cfg, workdir)
# In-memory embedding (the baselines' gallery): each host embeds its share, all get every row.
dp = data_parallel(cfg.parallel)
x = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
emb = embed_arrays(dp, dp.map_fn(lambda p, b: b * p), dp.replicate(np.float32(2.0)), x, 2)
rows_ok = emb.shape == x.shape and np.array_equal(emb, 2 * x)
with open(out, "w") as f:
    f.write(f"{jax.process_count()} {jax.device_count()} {fingerprint(state.params)} {rows_ok}\n")
