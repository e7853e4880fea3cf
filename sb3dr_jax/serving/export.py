"""The export a distillation run leaves behind, and what serving loads.

`<dir>/student.msgpack`: student params (flax serialization); `<dir>/student.json`: model
config, sketch preprocessing, the teacher's id, format version; `<dir>/index.*`: the retrieval
index (see `sb3dr_jax.evals.index`).
"""

from __future__ import annotations

import json
import os
import pathlib

import flax

from sb3dr_jax.evals.index import RetrievalIndex

FORMAT_VERSION = 1


def save_export(
    directory: str | os.PathLike,
    *,
    student_params,
    student_config: dict,
    index: RetrievalIndex,
    teacher_id: str,
) -> None:
    """Writes the student and the index.

    Args:
      directory: output folder.
      student_params: the student's `params` collection.
      student_config: {"model": build_model kwargs, "sketch_size": int}.
      index: the gallery.
      teacher_id: the teacher fingerprint the student was distilled against.
    """
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "student.msgpack").write_bytes(flax.serialization.to_bytes(student_params))
    meta = {"format_version": FORMAT_VERSION, "teacher_id": teacher_id, **student_config}
    (d / "student.json").write_text(json.dumps(meta, indent=2))
    index.save(d)


def load_export(directory: str | os.PathLike):
    """Reads an export: (student params (raw state dict), student meta, index).

    Raises:
      FileNotFoundError: missing files; IndexMismatchError: an index of another teacher.
    """
    d = pathlib.Path(directory).absolute()
    meta_path = d / "student.json"
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{meta_path}: not found, so {d} is no export (a relative path is taken from the "
            f"current folder, {os.getcwd()}); a distill run writes its export into "
            "<its --workdir>/export (`python -m launch.distill`)"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: unknown format version {meta.get('format_version')}")
    params = flax.serialization.msgpack_restore((d / "student.msgpack").read_bytes())
    index = RetrievalIndex.load(d, expected_encoder_id=meta["teacher_id"])
    return params, meta, index
