"""Dataset builds on Apache Beam: the records of the in-process build, rendered by many workers.

`python -m launch.render --beam` builds any dataset (demo, `../shared/data` layout, SHREC'13,
SHREC'14) through TFDS's Beam support: the builder hands TFDS one PCollection of (key, record)
per split, and TFDS encodes, shuffles and writes the shards in the same pipeline. Locally this
runs on Beam's DirectRunner with N worker processes; with `--beam_options='--runner=...'` the
same pipeline runs on Dataflow, Flink or Spark (README, "Dataset builds on Apache Beam").

Per split the pipeline is:

    items (position, item) -> outcome (render / rasterise, `items.py`) -> kept | dropped
    dropped -> sorted positions ---------------------------------- side input -+
    kept -> (key, record with index = position - dropped before it) <---------+

and the sketch splits take the shapes' per-class counts as a side input, to leave out the
sketches of a class with no loaded model, as the in-process build does. The dropped outcomes
(without pixels) and the class counts are written as JSON to a results folder beside the
records (local or `gs://`, through etils.epath); after the pipeline has run, the builder reads
them back and builds the report with the same `items.stage_report` as the in-process build, so
both reports are equal entry for entry, whichever worker skipped what.

Apache Beam is optional (the `beam` extra): this module imports it inside its functions, and
`import_beam` names the extra when it is missing.
"""

from __future__ import annotations

import dataclasses
import json
import shlex

from etils import epath

from sb3dr_jax.configs.common import ConfigError
from sb3dr_jax.data import items as items_lib
from sb3dr_jax.data.items import ItemSettings, Outcome

STAGES = ("shapes", "sketch_train", "sketch_test")
COUNTS_FILE = "shape_counts.json"


def import_beam():
    """Returns the `apache_beam` module, or raises a `ConfigError` saying how to install it."""
    try:
        import apache_beam
    except ImportError as e:
        raise ConfigError(
            "render --beam: Apache Beam is not installed in this environment; install the "
            "optional extra with `pip install 'sb3dr_jax[beam]'` (Beam pins protobuf, pillow "
            f"and pyarrow, so use a separate virtual environment) ({e})"
        ) from e
    return apache_beam


@dataclasses.dataclass(frozen=True)
class BeamConfig:
    """How to run a Beam build.

    Attributes:
      workers: DirectRunner worker processes (ignored when `options` names a `--runner`).
      options: extra Beam pipeline flags as one shell-quoted string, e.g.
        "--runner=DataflowRunner --project=p --region=r --temp_location=gs://b/tmp".
    """

    workers: int = 2
    options: str = ""

    def pipeline_options(self):
        """The `PipelineOptions`: DirectRunner with `workers` processes unless told otherwise.

        Returns:
          apache_beam PipelineOptions.

        Raises:
          ConfigError: `workers` < 1, or a flag Beam does not know (a typo such as
            `--runer=DataflowRunner` would otherwise run the whole build locally).
        """
        import_beam()
        from apache_beam.options.pipeline_options import PipelineOptions

        if self.workers < 1:
            raise ConfigError(f"beam.workers (--beam_workers) must be >= 1, got {self.workers}")
        flags = shlex.split(self.options)
        if not any(f == "--runner" or f.startswith("--runner=") for f in flags):
            # One OS process per worker: the per-item work is Python and holds the GIL.
            flags = [
                "--runner=DirectRunner",
                f"--direct_num_workers={self.workers}",
                "--direct_running_mode=multi_processing",
                "--default_sdk_harness_log_level=WARNING",  # not a line per worker start-up
                *flags,
            ]
        opts = PipelineOptions(flags)
        known = opts.get_all_options()
        unknown = sorted(set(opts.get_all_options(retain_unknown_options=True)) - set(known))
        if unknown:
            raise ConfigError(
                f"beam.options (--beam_options): Beam does not know {unknown}; see "
                "`python -m apache_beam.examples.wordcount --help` for the pipeline flags"
            )
        return opts


class _SketchFn:
    """Rasterises sketches; each worker keeps the QuickDraw files it has parsed."""

    def __init__(self, settings: ItemSettings):
        self.settings = settings
        self.ndjson: items_lib.NdjsonCache = {}

    def __call__(self, element, shape_counts: list[int]) -> Outcome:
        position, item = element
        has_target = shape_counts[self.settings.label(item.label)] > 0
        return items_lib.sketch_outcome(position, item, self.settings, has_target, self.ndjson)


def _shape(element: tuple, settings: ItemSettings) -> Outcome:
    return items_lib.shape_outcome(*element, settings)


def _write_json(value, path: str) -> None:
    epath.Path(path).write_text(json.dumps(value))


def _dropped_json(outcomes: list[Outcome]) -> list[dict]:
    return [dataclasses.asdict(o) for o in outcomes]


def _record(outcome: Outcome, dropped: list[int], settings: ItemSettings) -> tuple[str, dict]:
    return items_lib.to_record(outcome, items_lib.record_index(outcome.position, dropped), settings)


def expand_splits(
    pipeline, splits: dict[str, list], settings: ItemSettings, results_dir: str
) -> dict:
    """Adds every split's transforms to a TFDS Beam pipeline.

    Args:
      pipeline: the `beam.Pipeline` TFDS passes to `_split_generators`.
      splits: split name -> its items (`ShapeItem`s for "shapes", `SketchItem`s otherwise);
        empty splits are left out, as TFDS refuses them.
      settings: the per-item settings.
      results_dir: where the dropped outcomes and the class counts go (`read_results`).

    Returns:
      Split name -> PCollection of (key, record).
    """
    beam = import_beam()
    results = epath.Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    out = {}

    def outcomes_to_records(stage: str, outcomes):
        kept, dropped = outcomes | f"{stage}/partition" >> beam.Partition(
            lambda o, n: 0 if o.is_record else 1, 2
        )
        positions = (
            dropped
            | f"{stage}/positions" >> beam.Map(lambda o: o.position)
            | f"{stage}/collect" >> beam.combiners.ToList()
            | f"{stage}/sort" >> beam.Map(sorted)
        )
        _ = (
            dropped
            | f"{stage}/strip" >> beam.Map(Outcome.without_data)
            | f"{stage}/gather" >> beam.combiners.ToList()
            | f"{stage}/as_json" >> beam.Map(_dropped_json)
            | f"{stage}/report" >> beam.Map(_write_json, str(results / f"{stage}.json"))
        )
        out[stage] = kept | f"{stage}/records" >> beam.Map(
            _record, beam.pvalue.AsSingleton(positions), settings
        )
        return kept

    num_classes = len(settings.classes)
    if splits.get("shapes"):
        shapes = pipeline | "shapes/items" >> beam.Create(list(enumerate(splits["shapes"])))
        outcomes = shapes | "shapes/render" >> beam.Map(_shape, settings)
        kept = outcomes_to_records("shapes", outcomes)
        counts = (
            kept
            | "shapes/labels" >> beam.Map(lambda o: o.label)
            | "shapes/all_labels" >> beam.combiners.ToList()
            | "shapes/counts" >> beam.Map(items_lib.class_counts, num_classes)
        )
    else:
        counts = pipeline | "shapes/none" >> beam.Create([[0] * num_classes])
    _ = counts | "shapes/write_counts" >> beam.Map(_write_json, str(results / COUNTS_FILE))
    for stage in STAGES[1:]:
        if splits.get(stage):
            sketches = pipeline | f"{stage}/items" >> beam.Create(list(enumerate(splits[stage])))
            outcomes = sketches | f"{stage}/rasterise" >> beam.Map(
                _SketchFn(settings), beam.pvalue.AsSingleton(counts)
            )
            outcomes_to_records(stage, outcomes)
    return out


def read_results(results_dir: str, stages: list[str]) -> tuple[list[int], dict[str, list[Outcome]]]:
    """Reads what `expand_splits` wrote, once the pipeline has run.

    Args:
      results_dir: the folder given to `expand_splits`.
      stages: the splits that were built.

    Returns:
      (kept shapes per class, split -> its dropped outcomes).
    """
    results = epath.Path(results_dir)
    counts = json.loads((results / COUNTS_FILE).read_text())
    dropped = {
        s: [Outcome(**d) for d in json.loads((results / f"{s}.json").read_text())] for s in stages
    }
    return counts, dropped
