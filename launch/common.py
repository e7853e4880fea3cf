"""Shared launcher plumbing: flags for multi-host runs and `jax.distributed` set-up."""

from __future__ import annotations

import os

from absl import flags, logging

flags.DEFINE_string("workdir", None, "Output folder (checkpoints, metrics, config.json).")
flags.DEFINE_string("coordinator", None, "host:port of process 0 for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes (hosts) in a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")

FLAGS = flags.FLAGS


def _auto_cluster() -> bool:
    """True on a TPU pod slice or under a multi-task SLURM job (JAX reads the rest itself)."""
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
    tpu_pod = "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"]
    return slurm or tpu_pod


def setup(default_workdir: str) -> str:
    """Initialises `jax.distributed` when asked (or detected) and returns the workdir.

    Keeps TensorFlow (tf.data) off accelerators before anything else imports it.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # orbax logs every checkpoint step at INFO through absl; keep the console for progress.
    logging.set_verbosity(logging.ERROR)
    import jax

    if FLAGS.coordinator or FLAGS.num_processes:
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    elif _auto_cluster():
        jax.distributed.initialize()
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    return FLAGS.workdir or default_workdir


def config_path(name: str) -> str:
    """The packaged default config file `sb3dr_jax/configs/<name>.py` (works from any folder)."""
    import sb3dr_jax.configs

    return os.path.join(os.path.dirname(sb3dr_jax.configs.__file__), f"{name}.py")
