"""Training machinery shared by the teacher, the student and the baselines."""

from sb3dr_jax.train.loop import NonFiniteError, fit, load_config, save_config
from sb3dr_jax.train.optim import make_optimizer
from sb3dr_jax.train.parallel import DataParallel, data_parallel
from sb3dr_jax.train.state import TrainState
from sb3dr_jax.train.step import gather, make_step, sample_keys

__all__ = [
    "DataParallel",
    "NonFiniteError",
    "TrainState",
    "data_parallel",
    "fit",
    "gather",
    "load_config",
    "make_optimizer",
    "make_step",
    "sample_keys",
    "save_config",
]
