"""Every method on the same data, backbone, view resolution and step budget:
`run(config, output_dir)` behind `python -m launch.compare`.

The baselines train through `sb3dr_jax.baselines` (joint sketch + shape encoders). The thesis
methods run the real trainers, driven only through their config arguments: a label-free SSL
teacher (`pretrain`, BYOL + BCL, or `longtail=none`) trained once per variant in
`<output>/teachers/`, then the student (`distill`): `ssltkd` = the `pkaug` recipe, `ssl` =
`pkaug,no_kd` (enhanced triplet only), `plain_triplet` = `pkaug,plain_triplet`,
`no_longtail` = the `pkaug` student of the `longtail=none` teacher.

Honest tuning: each method trains `trials` learning rates (its base lr x `lr_factors`) on the
training split minus the validation split carved by `sketch_data.val_seed` (the same sketches
for every method), the best validation mAP is chosen, and its test figures are reported once.

Writes `results.md` (the table), `results.json` (every figure) and `pr_curves.png` (one line
per method). Resumes: a method whose `<output>/<method>/summary.json` exists is not trained
again; a half-trained one resumes from its checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time

import jax
import ml_collections

from sb3dr_jax import baselines
from sb3dr_jax.baselines.harness import choose, jsonable
from sb3dr_jax.configs.common import ConfigError
from sb3dr_jax.evals import report
from sb3dr_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class ThesisMethod:
    """A thesis method: which teacher variant, which student config arguments."""

    teacher: str  # the teacher's `longtail=` argument: "bcl" | "none"
    student_args: str  # arguments of `sb3dr_jax/configs/distill.py`


THESIS: Registry[ThesisMethod] = Registry("methods")
THESIS.register("ssltkd", ThesisMethod("bcl", "pkaug"))
THESIS.register("ssl", ThesisMethod("bcl", "pkaug,no_kd"))
THESIS.register("plain_triplet", ThesisMethod("bcl", "pkaug,plain_triplet"))
THESIS.register("no_longtail", ThesisMethod("none", "pkaug"))

# The model fields the thesis trainers share with the baselines' encoders.
_SHARED_MODEL = ("backbone", "num_filters", "norm", "dtype", "conv_impl")


def check_methods(names) -> list[str]:
    """The requested methods, validated before any training.

    Raises:
      ConfigError: an unknown name (naming `methods` and listing every choice) or a repeat.
    """
    names = list(names)
    choices = sorted([*baselines.BASELINES.names(), *THESIS.names()])
    for n in names:
        if n not in baselines.BASELINES and n not in THESIS:
            raise ConfigError(f"methods: unknown {n!r}; choose from {choices}")
    if len(set(names)) != len(names):
        raise ConfigError(f"methods: {names} names a method twice")
    return names


def _copy(c) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(c.to_dict())


def _smoke(config) -> bool:
    return bool(config.get("smoke", False))


def _args(*parts: str) -> str:
    return ",".join(p for p in parts if p)


def train_teacher(config, variant: str, output_dir: str) -> tuple[str, float]:
    """The SSL teacher of `variant` ("bcl" | "none"), trained once and shared.

    Returns:
      (its workdir, its training wall time in seconds; 0 for a given `teachers.<variant>`).
    """
    from sb3dr_jax import pretrain
    from sb3dr_jax.configs import pretrain as pretrain_config

    given = config.teachers.get(variant, "")
    if given:
        return given, 0.0
    wd = os.path.join(output_dir, "teachers", variant)
    timing = os.path.join(wd, "timing.json")
    if os.path.exists(timing):
        with open(timing) as f:
            return wd, float(json.load(f)["train_s"])
    tc = pretrain_config.get_config(_args("smoke" if _smoke(config) else "", f"longtail={variant}"))
    tc.dataset = _copy(config.dataset)
    tc.seed = int(config.seed)
    tc.total_steps = int(config.teacher_steps)
    tc.parallel = config.parallel
    tc.model.update({k: config.model[k] for k in _SHARED_MODEL})
    t0 = time.perf_counter()
    pretrain.run(tc, wd)
    seconds = time.perf_counter() - t0
    if jax.process_index() == 0:
        with open(timing, "w") as f:
            json.dump({"train_s": seconds}, f)
    return wd, seconds


def run_thesis(config, name: str, workdir: str, output_dir: str) -> dict:
    """Trains and evaluates one thesis method (each trial a `distill.run`).

    Returns:
      The chosen trial's summary with `train_s` (students, all trials), `teacher_s`, `trials`.
    """
    from sb3dr_jax import distill
    from sb3dr_jax.configs import distill as distill_config

    m = THESIS.get(name)
    teacher, teacher_s = train_teacher(config, m.teacher, output_dir)
    frac = float(config.sketch_data.val_fraction)
    args = _args(m.student_args, "smoke" if _smoke(config) else "", f"val={frac}" if frac else "")
    factors = list(config.lr_factors)[: int(config.trials)]
    results = []
    for i, factor in enumerate(factors):
        sc = distill_config.get_config(args)
        sc.teacher_workdir = teacher
        sc.seed = int(config.seed)
        sc.total_steps, sc.global_batch = int(config.total_steps), int(config.global_batch)
        sc.optim.lr = float(sc.optim.lr) * float(factor)
        sc.sketch_data.update(val_seed=int(config.sketch_data.val_seed))
        sc.sketch_data.update(pk_k=int(config.sketch_data.pk_k))
        sc.model.update({k: config.model[k] for k in _SHARED_MODEL})
        sc.log_every, sc.ckpt_every = int(config.log_every), int(config.ckpt_every)
        sc.parallel = config.parallel
        sc.export.web = False  # the comparison needs figures, not the web front end's assets
        sub = workdir if len(factors) == 1 else os.path.join(workdir, f"trial_{i}")
        t0 = time.perf_counter()
        summary = distill.run(sc, sub)
        summary["train_s"] = time.perf_counter() - t0
        summary["info"] = {"method": name, "lr": float(sc.optim.lr), "args": args}
        results.append(summary)
    out = choose(results)
    out["teacher_s"] = teacher_s
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(out, f, indent=1, default=jsonable)
    return out


def results_table(results: dict[str, dict]) -> str:
    """Markdown: SHREC metrics, the mAP variants (labelled), head/medium/tail mAP, validation
    mAP of the chosen trial, its lr and the training wall time (teacher included)."""
    groups = [
        g for g in ("head", "medium", "tail") if any(g in r["groups"] for r in results.values())
    ]
    head = [
        "method",
        *report.COLUMNS,
        "mAP (shrec_matlab)",
        "mAP (pr_mean)",
        *(f"mAP {g}" for g in groups),
        "val mAP",
        "lr",
        "train s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cells = [name, *(f"{r[c]:.3f}" for c in report.COLUMNS)]
        cells += [f"{r['mAP_shrec_matlab']:.3f}", f"{r['mAP_pr_mean']:.3f}"]
        cells += [f"{r['groups'][g]['mAP']:.3f}" if g in r["groups"] else "-" for g in groups]
        cells.append(f"{r['val']['mAP']:.3f}" if "val" in r else "-")
        cells.append(f"{r['info']['lr']:g}")
        cells.append(f"{r['train_s'] + r.get('teacher_s', 0.0):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(config, output_dir: str) -> dict[str, dict]:
    """Trains (or resumes) every method of `config.methods` and writes the reports.

    Args:
      config: a ConfigDict from `sb3dr_jax/configs/compare.py`.
      output_dir: `<method>/` per method, `teachers/`, results.md/.json, pr_curves.png.

    Returns:
      {method: summary} in the order of `config.methods`.

    Raises:
      ConfigError: an unknown method name (before any training).
    """
    names = check_methods(config.methods)
    t0 = time.perf_counter()
    results = {}
    for name in names:
        wd = os.path.join(output_dir, name)
        done = os.path.join(wd, "summary.json")
        if os.path.exists(done):
            with open(done) as f:
                results[name] = json.load(f)
            print(f"[compare] {name}: done in an earlier run ({done})", flush=True)
            continue
        print(f"[compare] {name} ...", flush=True)
        if name in THESIS:
            results[name] = run_thesis(config, name, wd, output_dir)
        else:
            c = _copy(config)
            c.method = name
            results[name] = baselines.run(c, wd)
    if jax.process_index() == 0:
        table = results_table(results)
        budget = {
            "dataset": config.dataset.name if not config.dataset.root else config.dataset.root,
            "steps": int(config.total_steps),
            "teacher_steps": int(config.teacher_steps),
            "global_batch": int(config.global_batch),
            "trials": int(config.trials),
            "val_fraction": float(config.sketch_data.val_fraction),
            "backbone": config.model.backbone,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {jax.devices()[0].platform}",
            "wall_s_this_invocation": time.perf_counter() - t0,
        }
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "results.md"), "w") as f:
            f.write(table + "\n\n" + json.dumps(budget) + "\n")
        with open(os.path.join(output_dir, "results.json"), "w") as f:
            json.dump({"budget": budget, "results": results}, f, indent=1, default=jsonable)
        report.plot_pr_curves(os.path.join(output_dir, "pr_curves.png"), results)
        print(table, flush=True)
    return results
