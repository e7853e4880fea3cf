"""Shared launcher plumbing: flags for multi-host runs, `jax.distributed` set-up, and the one
way every launcher reports an expected error (`main`).

Expected errors are the ones a user can fix: bad input (`DataError`: a file, a `.cla`, a
dataset folder), a bad config value (a `ValueError` naming the field, the code base's
convention), a missing file or run (`FileNotFoundError`: no teacher yet), a run stopped by the
NaN/divergence guard (`FloatingPointError`). They print one line, `error: <message>`, on stderr
and exit with status 1; `--debug` shows the traceback instead. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

# Before anything imports TensorFlow (tf.data, TFDS, clu): its start-up notices are not ours.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# On CPUs with AVX-512 VNNI / AMX, TensorFlow turns on its oneDNN graph rewrites and announces it
# through absl logging, which TF_CPP_MIN_LOG_LEVEL does not silence. TF only decodes uint8
# records here (no TF maths), so the rewrites change nothing but that notice.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import flags, logging  # noqa: E402

flags.DEFINE_string("coordinator", None, "host:port of process 0 for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes (hosts) in a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.DEFINE_bool(
    "debug", False, "Show the traceback of an expected error (bad input or config, a stopped run)."
)

FLAGS = flags.FLAGS
EXPECTED_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def define_output_workdir(default: str) -> None:
    """Defines `--workdir`: the folder a training launcher writes (one meaning everywhere)."""
    flags.DEFINE_string(
        "workdir",
        default,
        "Output folder of this run: checkpoints, metrics.jsonl, TensorBoard logs, config.json "
        "(a folder holding checkpoints is resumed).",
    )


def main(fn: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    """Wraps a launcher's `main(argv)`: expected errors become one line and exit status 1.

    Args:
      fn: the launcher's main.

    Returns:
      The wrapped main for `absl.app.run`.
    """

    @functools.wraps(fn)
    def wrapped(argv: list[str]) -> None:
        try:
            fn(argv)
        except EXPECTED_ERRORS as e:
            if FLAGS.debug:
                raise
            message = " ".join(str(e).split()) or type(e).__name__  # one line
            print(f"error: {message} (--debug shows the traceback)", file=sys.stderr, flush=True)
            sys.exit(1)

    return wrapped


def start(fn: Callable[[list[str]], None]) -> None:
    """The compute launchers' entry point: re-exec under tcmalloc, then `absl.app.run(fn)`.

    XLA:CPU steps take ~24% less time on tcmalloc (`sb3dr_jax/allocator.py`); the allocator is
    only replaced when it is preloaded before anything else, hence a re-exec of the process,
    done here once for every launcher rather than in each.

    Args:
      fn: the launcher's main (wrapped by `main`).
    """
    from absl import app

    from sb3dr_jax import allocator

    allocator.reexec_with_tcmalloc()
    app.run(fn)


def _auto_cluster() -> bool:
    """True on a TPU pod slice or under a multi-task SLURM job (JAX reads the rest itself)."""
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
    tpu_pod = "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"]
    return slurm or tpu_pod


def setup(default_workdir: str = "") -> str:
    """Initialises `jax.distributed` when asked (or detected); returns `--workdir`.

    Keeps TensorFlow (tf.data) off accelerators before anything else imports it.

    Args:
      default_workdir: returned when the launcher defines no `--workdir` or it is empty.

    Returns:
      The output folder.
    """
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
    workdir = (FLAGS.workdir if "workdir" in FLAGS else None) or default_workdir
    if workdir and os.path.exists(workdir) and not os.path.isdir(workdir):
        # caught here, before anything is trained, not as a traceback from the first save
        raise ValueError(f"--workdir {os.path.abspath(workdir)} is a file, not a folder")
    return workdir


def config_path(name: str) -> str:
    """The packaged default config file `sb3dr_jax/configs/<name>.py` (works from any folder)."""
    import sb3dr_jax.configs

    return os.path.join(os.path.dirname(sb3dr_jax.configs.__file__), f"{name}.py")
