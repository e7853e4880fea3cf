"""Evaluate distilled workdirs with the SHREC protocol: `run(config, workdirs)`.

Each workdir's `export/` (student + index) is loaded as serving would load it, the query split
is encoded with the student (every item, padded and masked), and the gallery is the index's
teacher embeddings of all target models. Several workdirs compare side by side.
"""

from __future__ import annotations

import os

import jax

from sb3dr_jax import evals
from sb3dr_jax.data import dataset_from_config, require_splits
from sb3dr_jax.evals import report
from sb3dr_jax.models import build_model
from sb3dr_jax.serving.export import load_export
from sb3dr_jax.train.encode import encode_split
from sb3dr_jax.train.loop import load_config
from sb3dr_jax.train.parallel import data_parallel


def evaluate_student(
    dp,
    model,
    params,
    builder,
    index,
    *,
    split: str,
    global_batch: int,
    group_thresholds: tuple[int, int],
) -> dict:
    """Encodes every sketch of `split` with the student and ranks the index's gallery.

    Args:
      dp: the data-parallel setup.
      model: the student module.
      params: its host params.
      builder: the dataset holding the query split.
      index: the gallery (teacher embeddings of all target models).
      split: the query split.
      global_batch: sketches per encoding call.
      group_thresholds: (head_min, tail_max) for the long-tail breakdown.

    Returns:
      The `evaluate_retrieval` summary.
    """
    fn = dp.map_fn(lambda p, b: model.apply({"params": p}, b["image"], train=False)[0])
    emb, labels, ids = encode_split(
        dp, fn, dp.replicate(params), builder, split, global_batch=global_batch, key="image"
    )
    if len(emb) == 0:
        raise ValueError(f"{builder.info.full_name}: split {split!r} has no sketches")
    return evals.evaluate_retrieval(
        emb,
        labels,
        index.embeddings,
        index.labels,
        class_names=index.class_names,
        group_thresholds=group_thresholds,
        num_classes=len(index.class_names),
        query_ids=ids,
        gallery_ids=index.model_ids,
    )


def evaluate_workdir(config, workdir: str, dp) -> dict:
    """The SHREC summary of one distilled workdir's export on `config.split`."""
    params, meta, index = load_export(os.path.join(workdir, "export"))
    builder = dataset_from_config(load_config(workdir).dataset)
    require_splits(builder, (config.split,), needed_by="evaluate")
    model = build_model("sketch_student", **meta["model"])
    return evaluate_student(
        dp,
        model,
        params,
        builder,
        index,
        split=config.split,
        global_batch=int(config.global_batch),
        group_thresholds=(int(config.head_min), int(config.tail_max)),
    )


def run(config, workdirs: list[str], output_dir: str | None = None) -> dict[str, dict]:
    """Evaluates each workdir and writes the reports.

    Args:
      config: a ConfigDict from `sb3dr_jax/configs/evaluate.py`.
      workdirs: distill workdirs (each with `export/` and `config.json`).
      output_dir: where reports go (default: the first workdir's `eval/`).

    Returns:
      {workdir name: summary}.
    """
    dp = data_parallel(config.parallel)
    results = {}
    for w in workdirs:
        name = os.path.basename(os.path.normpath(w))
        results[name if name not in results else w] = evaluate_workdir(config, w, dp)
    if jax.process_index() == 0:
        out = output_dir or os.path.join(workdirs[0], "eval")
        paths = report.write_all(out, results)
        print(report.markdown_table(results))
        print(f"\nreports: {', '.join(paths.values())}")
    return results


__all__ = ["evaluate_student", "evaluate_workdir", "run"]
