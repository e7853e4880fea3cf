"""Diagnose retrieval: `python -m launch.diagnose --workdir TEACHER [--student S ...] --output F`.

Writes the JSON behind `docs/retrieval_diagnosis.md`: the teacher's shape space, the oracle
student (the ceiling the teacher allows), batch composition, the rasterisation probe and, per
student workdir, train / val / test retrieval and its sketch-only class structure.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from launch import common

flags.DEFINE_multi_string("student", None, "Distill workdirs of this teacher (repeatable).")
flags.DEFINE_string("output", None, "The JSON report (default: <teacher workdir>/diagnosis.json).")
flags.DEFINE_list("raster_widths", ["1", "2", "3", "4"], "Stroke widths of the QuickDraw probe.")
flags.DEFINE_integer("global_batch", 32, "The student's global batch (batch composition).")
flags.DEFINE_integer("pk_k", 4, "K of the P x K sampler (batch composition).")


def main(argv):
    del argv
    teacher = common.setup("workdirs/pretrain")
    from sb3dr_jax import diagnose

    F = flags.FLAGS
    try:
        rep = diagnose.run(
            teacher,
            F.student or [],
            F.output or f"{teacher}/diagnosis.json",
            raster_widths=tuple(float(w) for w in F.raster_widths),
            global_batch=F.global_batch,
            pk_k=F.pk_k,
        )
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")
    print(json.dumps({k: rep[k] for k in ("teacher", "oracle", "batches", "raster")}, indent=1))
    for w, r in rep["students"].items():
        print(w, json.dumps(r, indent=1))


if __name__ == "__main__":
    common.start(main)  # tcmalloc re-exec, then absl
