"""Hard-failing validation of an exported graph, run through the runtime, against the PyTorch reference.

The graph side is what a deployment runs: a :class:`~hashee.runtime.Session` on the bundle (its
``TextEncoder``, its exit masks from ``exit_table.npy`` or the graph's embedded table, its ONNX Runtime
runner and input checks).  The reference side is the Hugging Face tokenizer and the PyTorch model.
Both must tokenise alike and agree within the tolerance, or :class:`~hashee.errors.ValidationError`
lists every case that does not.  :func:`check_export` runs the edge cases (batch 1, only special tokens,
every token exiting at layer 1, all tokens active, a padded batch of mixed lengths, sentence pairs,
random exit layers) on a staged export; :func:`validate_bundle` compares over a whole data file.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hashee.bundle import Bundle, open_bundle
from hashee.data import load_examples
from hashee.errors import BundleError, DataError, ValidationError
from hashee.exit_table import exit_masks, layer_masks
from hashee.exporter.manifest import TOLERANCE
from hashee.runtime.inputs import TruncationWarning
from hashee.runtime.session import Session
from hashee.samples import forced_exit_layers, sample_texts, validation_cases

__all__ = ["TOLERANCE", "BundleValidation", "check_embedded", "check_export", "ort_session",
           "sample_texts", "validate_bundle"]


def ort_session(model: Any) -> Any:
    """An ONNX Runtime CPU session for a path or serialized model (deterministic, no graph dumps)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def hf_encode(tokenizer: Any, inputs: list[Any], max_length: int) -> dict[str, np.ndarray]:
    """The Hugging Face tokenizer's padded int64 arrays for texts or (text, text) pairs."""
    pair = bool(inputs) and isinstance(inputs[0], tuple)
    args = ([a for a, _ in inputs], [b for _, b in inputs]) if pair else (list(inputs),)
    encoded = tokenizer(*args, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items()}


def reference_outputs(model: Any, encoded: dict[str, np.ndarray], input_names: list[str], dense: bool,
                      exit_layers: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The PyTorch model's outputs (``logits``; ``token_states`` for HashEE) for one tokenised batch; the
    model gets the arrays the graph takes (``input_names``)."""
    import torch

    tensors = {k: torch.as_tensor(v) for k, v in encoded.items() if k in input_names}
    with torch.no_grad():
        if dense:
            return {"logits": model(**tensors).logits.float().numpy()}
        out = model(**tensors, exit_layers=None if exit_layers is None else torch.as_tensor(exit_layers),
                    output_token_states=True)
    return {"logits": out.logits.float().numpy(), "token_states": out.token_states.float().numpy()}


def runtime_batch(session: Session, inputs: list[Any]) -> dict[str, np.ndarray]:
    """The Session's own padded arrays for ``inputs`` (truncation is expected here: no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        return session.tokenize(inputs)


def check_tokens(case: str, mine: dict[str, np.ndarray], theirs: dict[str, np.ndarray], session: Session) -> None:
    """Raise :class:`ValidationError` unless the runtime's encoder gives the Hugging Face tokenizer's arrays."""
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if session.uses_token_type_ids else [])
    for name in names:
        a, b = mine[name], theirs.get(name, np.zeros_like(theirs["input_ids"]))
        if a.shape != b.shape or not np.array_equal(a, b):
            raise ValidationError(f"{case}: the bundle's tokenizer (as the runtime loads it) and the Hugging Face "
                                  f"tokenizer give different {name} ({a.shape} vs {b.shape}); re-export the bundle")


def compare(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    """Max |difference| per output present on both sides."""
    return {name: float(np.max(np.abs(outputs[name].astype(np.float64) - reference[name]), initial=0.0))
            for name in outputs if name in reference}


def check_export(bundle: Bundle, model: Any, tokenizer: Any, dense: bool = False,
                 tolerance: float = TOLERANCE) -> dict[str, dict[str, float]]:
    """Run every edge case through a :class:`Session` on ``bundle`` (a staged export's view) and through the
    PyTorch reference; raise on a tokenizer mismatch or any excess difference.

    Cases with forced exit layers are skipped where the graph fixes its own masks (dense, or the exit
    table embedded).  Returns ``{case: {output: max |difference|}}``.
    """
    session = Session.for_model_file(bundle, bundle.model_file)
    try:
        report: dict[str, dict[str, float]] = {}
        for name, inputs, mode in validation_cases():
            if mode is not None and not session.takes_exit_masks:
                continue
            mine = runtime_batch(session, inputs)
            theirs = hf_encode(tokenizer, inputs, bundle.max_length)
            check_tokens(name, mine, theirs, session)
            exits = None if mode is None else forced_exit_layers(mode, mine["input_ids"].shape, bundle.num_layers)
            masks = None if exits is None else layer_masks(exits, mine["attention_mask"], bundle.num_layers)
            outputs = session.run(mine["input_ids"], mine["attention_mask"], mine.get("token_type_ids"), masks)
            report[name] = compare(outputs, reference_outputs(model, theirs, session.input_names, dense, exits))
    finally:
        session.close()
    _raise_on_excess(report, tolerance, "the exported graph disagrees with the PyTorch reference")
    return report


def check_embedded(embedded_file: Path, masks_model: Any, table: np.ndarray, num_layers: int, tokenizer: Any,
                   max_length: int, tolerance: float = 1e-5) -> dict[str, dict[str, float]]:
    """Compare a rewritten graph (exit table embedded, and/or int32 inputs) with the graph it was made
    from on the text edge cases; where ``masks_model`` takes ``exit_masks`` they come from ``table``.
    Inputs are cast to each graph's own integer types.  Raises :class:`ValidationError` beyond
    ``tolerance``."""
    embedded, masked = ort_session(embedded_file), ort_session(masks_model.SerializeToString())
    types = {"tensor(int32)": np.int32, "tensor(int64)": np.int64}

    def feed_for(session: Any, encoded: dict[str, Any]) -> dict[str, np.ndarray]:
        feed = {i.name: np.asarray(encoded[i.name], dtype=types.get(i.type, np.int64))
                for i in session.get_inputs() if i.name in encoded}
        if any(i.name == "exit_masks" for i in session.get_inputs()):
            feed["exit_masks"] = exit_masks(encoded["input_ids"], encoded["attention_mask"], table, num_layers)
        return feed

    def run(session: Any, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feed)))

    report: dict[str, dict[str, float]] = {}
    for name, inputs, mode in validation_cases():
        if mode is None:
            encoded = hf_encode(tokenizer, inputs, max_length)
            report[name] = compare(run(embedded, feed_for(embedded, encoded)), run(masked, feed_for(masked, encoded)))
    _raise_on_excess(report, tolerance, "the rewritten graph disagrees with the graph it was made from")
    return report


def _raise_on_excess(report: dict[str, dict[str, float]], tolerance: float, what: str) -> None:
    """Raise :class:`ValidationError` listing every case/output whose difference exceeds ``tolerance``."""
    failures = [f"{case}: {output} differs by {diff:.3g}" for case, diffs in report.items()
                for output, diff in diffs.items() if not diff <= tolerance]
    if failures:
        raise ValidationError(f"{what} beyond {tolerance:g}: " + "; ".join(failures))


@dataclass
class BundleValidation:
    """Agreement of a bundle with the PyTorch reference over a data file."""

    bundle: Path
    data_file: Path
    num_examples: int
    max_abs_diff: float
    label_agreement: float | None  # None for regression
    accuracy: float | None = None  # of the bundle's predictions, when the file has labels
    tolerance: float = TOLERANCE
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def format(self) -> str:
        lines = [f"bundle: {self.bundle}", f"data:   {self.data_file} ({self.num_examples} examples)",
                 f"max |difference| of logits vs PyTorch: {self.max_abs_diff:.3g} (tolerance {self.tolerance:g})"]
        if self.label_agreement is not None:
            lines.append(f"label agreement with PyTorch: {100 * self.label_agreement:.2f} %")
        if self.accuracy is not None:
            lines.append(f"accuracy of the bundle: {self.accuracy:.4f}")
        return "\n".join(lines)


def gold_labels(examples: Any, bundle: Bundle) -> np.ndarray | None:
    """Class ids of a data file's labels through the bundle's labels (``None``: no usable labels)."""
    if not examples.has_labels or bundle.is_regression:
        return None
    try:
        return examples.label_ids(bundle.label2id)
    except DataError:
        return None


def _reference_model(bundle: Bundle, reference: str | Path | None) -> Any:
    """The PyTorch model of the run the bundle was exported from (dense bundles: its dense classifier)."""
    from hashee.evaluation import load_run  # torch and transformers

    folder = Path(reference or bundle.meta.get("source", {}).get("run_dir") or "")
    if not str(folder) or not folder.is_dir():
        raise BundleError(f"the reference run folder {str(folder) or '(none recorded)'} does not exist; "
                          f"pass --reference RUN_DIR")
    model, _, kind = load_run(folder, device="cpu")
    if bundle.kind == "dense" and kind == "hashee":  # a dense baseline exported from a HashEE run: its backbone
        return model.dense.eval()
    if bundle.kind == "hashee" and kind != "hashee":
        raise BundleError(f"{bundle.path} is a HashEE bundle but {folder} holds a dense model; pass --reference "
                          f"with the HashEE run it was exported from")
    return model


def validate_bundle(bundle: str | Path, data_file: str | Path, reference: str | Path | None = None,
                    batch_size: int = 64, max_length: int | None = None, tolerance: float = TOLERANCE,
                    progress: bool = True, raise_on_failure: bool = True) -> BundleValidation:
    """Compare a bundle, run by the runtime (``Session``, ONNX Runtime CPU), with the PyTorch reference
    over a whole data file.

    ``reference`` is the run folder the bundle was exported from (default: the one recorded in
    ``hashee.json``).  The runtime takes its exit masks from the bundle's ``exit_table.npy`` (or its
    embedded table); the reference uses the model's table, so a table that drifted shows up as a
    difference.  ``max_length`` (at most the bundle's) truncates both sides.  Raises
    :class:`~hashee.errors.ValidationError` when the max |difference| exceeds ``tolerance``.
    """
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    view = open_bundle(bundle)
    if not Path(data_file).is_file():
        raise DataError(f"data file {data_file} does not exist")
    model = _reference_model(view, reference)
    if max_length is not None:
        view = dataclasses.replace(view, max_length=min(int(max_length), view.max_length))
    tokenizer = AutoTokenizer.from_pretrained(str(view.tokenizer_dir))
    examples = load_examples(data_file, regression=view.is_regression)
    gold = gold_labels(examples, view)
    inputs = examples.inputs()
    worst, agree, correct = 0.0, 0, 0
    with Session.for_model_file(view, view.model_file) as session:
        for start in tqdm(range(0, len(examples), batch_size), desc="validate", disable=not progress, unit="batch"):
            chunk = inputs[start:start + batch_size]
            mine = runtime_batch(session, chunk)
            logits = session.run(mine["input_ids"], mine["attention_mask"], mine.get("token_type_ids"))["logits"]
            ref = reference_outputs(model, hf_encode(tokenizer, chunk, view.max_length), session.input_names,
                                    view.kind == "dense")["logits"]
            worst = max(worst, float(np.max(np.abs(logits - ref), initial=0.0)))
            if not view.is_regression:
                predicted = logits.argmax(-1)
                agree += int((predicted == ref.argmax(-1)).sum())
                if gold is not None:
                    correct += int((predicted == gold[start:start + batch_size]).sum())
    count = len(examples)
    result = BundleValidation(Path(bundle), Path(data_file), count, worst, None if view.is_regression else agree / count,
                              None if gold is None else correct / count, tolerance)
    if raise_on_failure and not result.ok:
        raise ValidationError(f"{bundle}: max |difference| of logits {worst:.3g} exceeds {tolerance:g} over "
                              f"{count} examples of {data_file}")
    return result
