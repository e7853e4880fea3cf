"""The literature baselines in one harness (METHODS.md section 4; issue 17).

`BASELINES` (a `Registry("method")`) maps names to `Method`s; `build` returns one stage's
`Experiment` without disk or data; `run(config, workdir)` trains, tunes on validation and
evaluates one method with the thesis student's protocol.
"""

from sb3dr_jax.baselines.harness import build, load_data, run, train_one
from sb3dr_jax.baselines.methods import BASELINES, Method, Stage

__all__ = ["BASELINES", "Method", "Stage", "build", "load_data", "run", "train_one"]
