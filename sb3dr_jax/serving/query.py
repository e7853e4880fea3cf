"""The query API: a sketch in (any size; path, PNG bytes or array), ranked 3D models out.

The preprocessing is `sb3dr_jax.data.sketches.load_sketch`, the same function the dataset
builder used for training, so a drawing from a browser canvas and a benchmark PNG take the
same path.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from sb3dr_jax.data.sketches import load_sketch
from sb3dr_jax.models import build_model
from sb3dr_jax.serving.export import load_export


class QueryEngine:
    """A loaded student + index; `query` is one call per sketch."""

    def __init__(self, params, meta: dict, index):
        self.meta, self.index = meta, index
        self.sketch_size = int(meta["sketch_size"])
        model = build_model("sketch_student", **meta["model"])
        self._embed = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)[0])
        self._params = params

    @classmethod
    def from_export(cls, directory: str | os.PathLike = "workdirs/distill/export") -> QueryEngine:
        """Loads `<workdir>/export` (refuses an index built by another teacher).

        Args:
          directory: the export folder; the default is `launch.distill`'s, relative to the
            current folder (errors name the absolute path looked at).

        Raises:
          FileNotFoundError: no export there; IndexMismatchError: another teacher's index.
        """
        return cls(*load_export(directory))

    def embed(self, sketches) -> np.ndarray:
        """Embeddings [n, E] of sketches (each a path, bytes or array)."""
        imgs = np.stack([load_sketch(s, size=self.sketch_size) for s in sketches])[..., None]
        return np.asarray(self._embed(self._params, imgs))

    def query(self, sketch, k: int = 10) -> list[dict]:
        """Ranks the gallery for one sketch.

        Args:
          sketch: a path, PNG/JPEG bytes, or an array of any size.
          k: number of results.

        Returns:
          [{"model_id", "label", "score"}] best first.
        """
        scores, idx = self.index.search(self.embed([sketch]), k)
        return [
            {
                "model_id": self.index.model_ids[i],
                "label": self.index.class_names[self.index.labels[i]],
                "score": float(s),
            }
            for s, i in zip(scores[0], idx[0])
        ]
