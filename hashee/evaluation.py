"""Scoring a trained run: load a run directory, predict a data file, report metric and FLOPs.

:func:`evaluate` works on any folder written by ``hashee train`` (HashEE or dense) or by
``save_pretrained`` with its tokenizer.  The FLOPs reduction is measured on the data itself, from the
exit layers the model actually used.  Passing another ``exit_table`` runs the inconsistent-hash
ablation (a model trained with one table, evaluated with another).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hashee.data import TokenizedDataset, load_examples, tokenize_examples
from hashee.errors import BackboneError, DataError, ExitTableError, HasheeError, TrainConfigError
from hashee.exit_table import ExitTable
from hashee.flops import EncoderDims, FlopsReport, batch_flops
from hashee.lengths import max_length_limit
from hashee.metrics import compute_metrics

TRAIN_META = "hashee_train.json"


@dataclass
class EvalResult:
    """Scores of a run on a data file; predictions are in the file's order."""

    run_dir: Path
    data_file: Path
    kind: str
    metrics: dict[str, float]  # empty when the file has no labels
    flops: FlopsReport
    predictions: np.ndarray  # class ids, or regression outputs
    logits: np.ndarray = field(repr=False, default=None)
    label_names: list[str] | None = None
    is_regression: bool = False
    exit_table_meta: dict[str, Any] | None = None

    @property
    def num_examples(self) -> int:
        return int(self.predictions.shape[0])

    @property
    def predicted_labels(self) -> list[Any]:
        """Predictions as label names (classification) or floats (regression)."""
        if self.is_regression or not self.label_names:
            return self.predictions.tolist()
        return [self.label_names[int(i)] for i in self.predictions]

    @property
    def flops_reduction(self) -> float:
        """Dense FLOPs / model FLOPs on this data (1.0 for dense runs)."""
        return self.flops.speedup


def _check_number(name: str, value: Any, low: float, high: float | None = None, integer: bool = False,
                  low_inclusive: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = (value >= low if low_inclusive else value > low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low}" + (f" and <= {high}" if high is not None else "")
        raise TrainConfigError(f"{name} must be {'an integer' if integer else 'a number'} {bound}, got {value!r}")


def _max_length_limit(tokenizer: Any, config: Any) -> int | None:
    """The core max-length rule (:func:`hashee.lengths.max_length_limit`), in this module's argument order."""
    return max_length_limit(config, tokenizer)


def _device(device: Any = None) -> Any:
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _model_kind(run_dir: Path) -> str:
    config_path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise BackboneError(f"run directory {run_dir} does not exist; pass a folder written by hashee train")
    if not config_path.is_file():
        raise BackboneError(f"{run_dir} holds no config.json; pass a run folder written by hashee train")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except json.JSONDecodeError as exc:
        raise BackboneError(f"{config_path} is not valid JSON ({exc})") from exc
    return "hashee" if model_type == "hashee" else "dense"


def _import_modeling() -> Any:
    try:
        import hashee.modeling as modeling
    except ImportError as exc:
        raise BackboneError(f"hashee.modeling is not available ({exc}); reinstall hashee") from exc
    return modeling


def _load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackboneError(f"cannot load a tokenizer from {path} ({exc}); the folder needs the tokenizer "
                            f"files (tokenizer.json or vocab files) next to config.json") from exc


def load_run(run_dir: str | Path, device: Any = None) -> tuple[Any, Any, str]:
    """Load a run directory: ``(model in eval mode, tokenizer, kind)`` with kind ``hashee`` or ``dense``."""
    from transformers import AutoModelForSequenceClassification

    run_dir = Path(run_dir)
    kind = _model_kind(run_dir)
    try:
        if kind == "hashee":
            model = _import_modeling().HashEEForSequenceClassification.from_pretrained(str(run_dir))
        else:
            model = AutoModelForSequenceClassification.from_pretrained(str(run_dir))
    except (OSError, ValueError) as exc:
        if isinstance(exc, HasheeError):
            raise
        raise BackboneError(f"cannot load the model in {run_dir}: {exc}") from exc
    tokenizer = _load_tokenizer(run_dir)
    return model.to(_device(device)).eval(), tokenizer, kind


def _run_meta(run_dir: Path) -> dict[str, Any]:
    path = run_dir / TRAIN_META
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def predict_dataset(model: Any, dataset: TokenizedDataset, tokenizer: Any, kind: str, batch_size: int = 64,
                    progress: bool = True, desc: str = "predict") -> tuple[np.ndarray, FlopsReport]:
    """Run ``model`` over ``dataset`` (no grad, eval mode, length-sorted batches).

    Returns the logits in dataset order and the FLOPs report: exit layers come from the model's exit
    table for HashEE (``model.exit_layers_for``) and are all ``L`` for dense models.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import DataCollatorWithPadding

    config = model.dense.config if kind == "hashee" else model.config
    dims = EncoderDims.from_config(config)
    collator = DataCollatorWithPadding(tokenizer)
    device = next(model.parameters()).device
    order = np.argsort(-np.asarray(dataset.lengths), kind="stable")
    logits_out: list[np.ndarray] = [None] * len(order)  # type: ignore[list-item]
    report: FlopsReport | None = None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
                index = order[start:start + batch_size]
                batch = collator([{k: v for k, v in dataset[int(i)].items() if k != "labels"} for i in index])
                batch = {k: v.to(device) for k, v in batch.items()}
                output = model(**batch)
                logits = output.logits.float().cpu().numpy()
                exits = output.exit_layers if kind == "hashee" else batch["attention_mask"] * dims.num_layers
                part = batch_flops(exits.cpu().numpy(), dims)
                report = part if report is None else report + part
                for row, i in enumerate(index):
                    logits_out[int(i)] = logits[row]
    finally:
        model.train(was_training)
    if report is None:
        raise DataError("there are no examples to predict")
    return np.stack(logits_out), report


def evaluate(run_dir: str | Path, data_file: str | Path, batch_size: int = 64, max_length: int | None = None,
             text_column: str | int | None = None, pair_column: str | int | None = None,
             label_column: str | int | None = None, progress: bool = True, device: Any = None,
             exit_table: ExitTable | str | Path | None = None) -> EvalResult:
    """Score a run directory (HashEE or dense) on a data file.

    ``max_length`` defaults to the training run's; the columns to those named at training time, else
    to what the file's header says.  Returns the metrics (empty for an unlabelled file), the FLOPs report on
    this data (reduction 1.0 for dense runs) and the predictions in the file's order.

    ``exit_table`` (an :class:`~hashee.ExitTable` or a folder written by ``hashee hash``) replaces the
    HashEE model's own table for this evaluation, e.g. a ``random-incons`` table for the consistency
    ablation.  The run directory is not modified.
    """
    run_dir = Path(run_dir)
    _check_number("batch_size", batch_size, 1, integer=True)
    if max_length is not None:
        _check_number("max_length", max_length, 2, integer=True)
    if not Path(data_file).is_file():
        raise DataError(f"data file {data_file} does not exist")
    model, tokenizer, kind = load_run(run_dir, device)
    config = model.config
    if exit_table is not None:
        _swap_exit_table(model, kind, exit_table)
    regression = config.problem_type == "regression" or config.num_labels == 1
    meta = _run_meta(run_dir)
    if max_length is None:
        max_length = int(meta.get("recipe", {}).get("max_length") or 0) or min(
            _max_length_limit(tokenizer, model.dense.config if kind == "hashee" else config) or 512, 512)
    columns = (text_column, pair_column, label_column)
    if all(c is None for c in columns):  # the columns named at training time, if any
        flags = meta.get("data", {}).get("column_flags") or {}
        columns = (flags.get("text"), flags.get("pair"), flags.get("label"))
    examples = load_examples(data_file, *columns, regression=regression)
    label_names = None if regression else [config.id2label[i] for i in range(config.num_labels)]
    label2id = None
    if not regression and examples.labels is not None:
        label2id = {name: i for i, name in enumerate(label_names)}
        unknown = set(examples.labels) - set(label2id)
        if unknown and all(s.isdigit() and int(s) < config.num_labels for s in set(examples.labels)):
            label2id = {str(i): i for i in range(config.num_labels)}  # a model with names, data with ids
    dataset = tokenize_examples(examples, tokenizer, max_length, label2id)
    logits, flops = predict_dataset(model, dataset, tokenizer, kind, batch_size, progress, "eval")
    metrics: dict[str, float] = {}
    if examples.labels is not None:
        gold = np.asarray([f["labels"] for f in dataset.features])
        metrics = compute_metrics(logits, gold, regression, None if regression else config.num_labels)
    predictions = logits[:, 0].astype(np.float64) if regression else logits.argmax(axis=1)
    return EvalResult(run_dir=run_dir, data_file=Path(data_file), kind=kind, metrics=metrics, flops=flops,
                      predictions=predictions, logits=logits, label_names=label_names, is_regression=regression,
                      exit_table_meta=model.exit_table.to_meta() if kind == "hashee" else None)


def format_eval_report(result: EvalResult) -> str:
    """A few human-readable lines: the run, the data, metric values, FLOPs dense vs HashEE, reduction."""
    if result.kind == "hashee" and result.exit_table_meta:
        meta = result.exit_table_meta
        buckets = meta.get("metadata", {}).get("num_buckets", "?")
        what = f"HashEE, {meta.get('kind', '?')} hash, L={meta.get('num_layers', '?')}, B={buckets}"
    else:
        what = "HashEE" if result.kind == "hashee" else "dense"
    lines = [f"run:   {result.run_dir} ({what})", f"data:  {result.data_file} ({result.num_examples} examples)"]
    return "\n".join(lines + score_lines(result.metrics, result.flops, result.kind))


def score_lines(metrics: dict[str, float] | None, flops: FlopsReport, kind: str) -> list[str]:
    """``score:`` and ``FLOPs:`` report lines shared by the train and eval reports."""
    if metrics:
        lines = ["score: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "main")]
    else:
        lines = ["score: the file has no labels; predictions only"]
    per = max(flops.num_sequences, 1)
    dense, model = flops.dense_flops / per / 1e9, flops.hashee_flops / per / 1e9
    if kind == "hashee":
        lines.append(f"FLOPs: dense {dense:.4g} GFLOPs/example, HashEE {model:.4g} GFLOPs/example, "
                     f"reduction {flops.speedup:.2f}x")
    else:
        lines.append(f"FLOPs: dense {dense:.4g} GFLOPs/example (dense run, reduction 1.00x)")
    return lines


def _swap_exit_table(model: Any, kind: str, exit_table: ExitTable | str | Path) -> None:
    """Put another exit table into a loaded HashEE model (same vocabulary and depth)."""
    import torch

    if kind != "hashee":
        raise BackboneError("--exit-table applies to HashEE runs; this run is dense")
    if not isinstance(exit_table, ExitTable):
        exit_table = ExitTable.load(exit_table)
    if exit_table.num_layers != model.num_layers:
        raise ExitTableError(f"the exit table is for {exit_table.num_layers} layers but the model has "
                             f"{model.num_layers}; build one with --layers {model.num_layers}")
    exit_table.check_vocab_size(model.exit_table_layers.shape[0], "the model")
    model.exit_table_layers.copy_(torch.as_tensor(exit_table.layers.astype(np.int64)))
    model.config.exit_table = exit_table.to_meta()
