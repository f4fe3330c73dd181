"""Hard-failing validation of an exported graph against the PyTorch reference.

:func:`check_export` runs the saved file on ONNX Runtime CPU next to the reference model on real
text and on edge inputs (batch 1, only special tokens, every token exiting at layer 1, all tokens
active, a padded batch of mixed lengths, sentence pairs, random exit layers) and raises
:class:`~hashee.errors.ValidationError` listing every output whose max |difference| exceeds the
tolerance.  :func:`validate_bundle` does the same comparison over a whole data file.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hashee.errors import ValidationError

TOLERANCE = 1e-4  # fp32


def sample_texts(count: int = 16) -> list[str]:
    """Real sentences: the first ``count`` of the bundled SST-2 dev sample."""
    from hashee.samples import SST2_DEV

    with open(SST2_DEV, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return [row[0] for _, row in zip(range(count), reader)]


def ort_session(model: Any) -> Any:
    """An ONNX Runtime CPU session for a path or serialized model (deterministic, no graph dumps)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _encode(tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int) -> dict[str, np.ndarray]:
    args = (texts, pairs) if pairs is not None else (texts,)
    return dict(tokenizer(*args, padding=True, truncation=True, max_length=max_length, return_tensors="np"))


def edge_cases(tokenizer: Any, num_layers: int, max_length: int, seed: int = 0) -> list[tuple[str, dict, Any]]:
    """``(name, tokenizer output, exit layers or None for the table's)`` for every validation case."""
    texts = sample_texts()
    batch = _encode(tokenizer, texts, None, max_length)
    rng = np.random.default_rng(seed)
    shape = batch["input_ids"].shape
    return [
        ("text, padded batch of mixed lengths", batch, None),
        ("batch of 1", _encode(tokenizer, texts[:1], None, max_length), None),
        ("only special tokens", _encode(tokenizer, ["", ""], None, max_length), None),
        ("every token exits at layer 1", batch, np.ones(shape, dtype=np.int64)),
        ("all tokens active", batch, np.full(shape, num_layers, dtype=np.int64)),
        ("sentence pairs", _encode(tokenizer, texts[:8], texts[8:16], max_length), None),
        ("random exit layers", batch, rng.integers(1, num_layers + 1, size=shape)),
    ]


def hashee_reference(model: Any, encoded: dict[str, np.ndarray], input_names: list[str],
                     exit_layers: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(ONNX feed, reference outputs)`` of a HashEE model for one tokenized batch."""
    import torch

    tensors = {k: torch.as_tensor(np.asarray(v, dtype=np.int64)) for k, v in encoded.items() if k in input_names}
    with torch.no_grad():
        out = model(**tensors, exit_layers=None if exit_layers is None else torch.as_tensor(exit_layers),
                    output_token_states=True)
    exits = out.exit_layers.cpu().numpy()
    feed = {k: v.numpy() for k, v in tensors.items()}
    feed["exit_masks"] = np.stack([exits >= layer for layer in range(1, model.num_layers + 1)])
    reference = {"logits": out.logits.float().numpy(), "token_states": out.token_states.float().numpy()}
    return feed, reference


def dense_reference(model: Any, encoded: dict[str, np.ndarray], input_names: list[str]
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(ONNX feed, reference logits)`` of a dense Hugging Face classifier for one tokenized batch."""
    import torch

    feed = {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items() if k in input_names}
    with torch.no_grad():
        logits = model(**{k: torch.as_tensor(v) for k, v in feed.items()}).logits
    return feed, {"logits": logits.float().numpy()}


def check_embedded(embedded_file: Path, masks_model: Any, table: np.ndarray, num_layers: int, tokenizer: Any,
                   max_length: int, tolerance: float = 1e-5) -> dict[str, dict[str, float]]:
    """Compare a rewritten graph (exit table embedded, and/or int32 inputs) with the graph it was made
    from on the text edge cases; where ``masks_model`` takes ``exit_masks`` they come from ``table``.
    Inputs are cast to each graph's own integer types.  Raises :class:`ValidationError` beyond
    ``tolerance``."""
    from hashee.runtime.batching import exit_masks

    embedded, masked = ort_session(embedded_file), ort_session(masks_model.SerializeToString())
    types = {"tensor(int32)": np.int32, "tensor(int64)": np.int64}

    def feed_for(session: Any, encoded: dict[str, Any]) -> dict[str, np.ndarray]:
        feed = {i.name: np.asarray(encoded[i.name], dtype=types.get(i.type, np.int64))
                for i in session.get_inputs() if i.name in encoded}
        if any(i.name == "exit_masks" for i in session.get_inputs()):
            ids = np.asarray(encoded["input_ids"], dtype=np.int64)
            feed["exit_masks"] = exit_masks(ids, np.asarray(encoded["attention_mask"]), table, num_layers)
        return feed

    outputs = [o.name for o in embedded.get_outputs()]
    report: dict[str, dict[str, float]] = {}
    for name, encoded, exits in edge_cases(tokenizer, num_layers, max_length):
        if exits is not None:
            continue
        mine = dict(zip(outputs, embedded.run(outputs, feed_for(embedded, encoded))))
        report[name] = compare(masked, feed_for(masked, encoded), mine)
    _raise_on_excess(report, tolerance, "the rewritten graph disagrees with the graph it was made from")
    return report


def compare(session: Any, feed: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    """Max |difference| per output the session produces that the reference also has."""
    names = [o.name for o in session.get_outputs() if o.name in reference]
    outputs = session.run(names, feed)
    return {name: float(np.max(np.abs(out - reference[name]), initial=0.0)) for name, out in zip(names, outputs)}


def check_export(model_file: Path, model: Any, tokenizer: Any, max_length: int, dense: bool = False,
                 tolerance: float = TOLERANCE) -> dict[str, dict[str, float]]:
    """Run every edge case through the saved file and the reference; raise on any excess difference.

    Returns ``{case: {output: max |difference|}}``.
    """
    session = ort_session(model_file)
    input_names = [i.name for i in session.get_inputs()]
    num_layers = 1 if dense else int(model.num_layers)
    fixed_masks = dense or "exit_masks" not in input_names  # dense, or the exit table embedded in the graph
    report: dict[str, dict[str, float]] = {}
    for name, encoded, exits in edge_cases(tokenizer, num_layers, max_length):
        if fixed_masks and exits is not None:
            continue
        if dense:
            feed, reference = dense_reference(model, encoded, input_names)
        else:
            feed, reference = hashee_reference(model, encoded, input_names, exits)
            feed = {k: v for k, v in feed.items() if k in input_names}
        report[name] = compare(session, feed, reference)
    _raise_on_excess(report, tolerance, "the exported graph disagrees with the PyTorch reference")
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


def validate_bundle(bundle: str | Path, data_file: str | Path, reference: str | Path | None = None,
                    batch_size: int = 64, max_length: int | None = None, tolerance: float = TOLERANCE,
                    progress: bool = True, raise_on_failure: bool = True) -> BundleValidation:
    """Compare a bundle on ONNX Runtime CPU with the PyTorch reference over a whole data file.

    ``reference`` is the run folder the bundle was exported from (default: the one recorded in
    ``hashee.json``).  Exit masks come from the bundle's own ``exit_table.npy``; the reference uses
    the model's table, so a table that drifted shows up as a difference.  Raises
    :class:`~hashee.errors.ValidationError` when the max |difference| exceeds ``tolerance``.
    """
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from hashee.data import load_examples
    from hashee.errors import BundleError, DataError
    from hashee.evaluation import load_run
    from hashee.exporter.bundle import MODEL_FILE, TABLE_FILE, TOKENIZER_DIR, read_bundle

    bundle = Path(bundle)
    meta = read_bundle(bundle)
    reference = Path(reference or meta.get("source", {}).get("run_dir") or "")
    if not str(reference) or not reference.is_dir():
        raise BundleError(f"the reference run folder {str(reference) or '(none recorded)'} does not exist; "
                          f"pass --reference RUN_DIR")
    if not Path(data_file).is_file():
        raise DataError(f"data file {data_file} does not exist")
    model, _, kind = load_run(reference, device="cpu")
    dense = meta.get("kind") == "dense"
    if dense and kind == "hashee":  # a dense baseline exported from a HashEE run: its backbone's weights
        model = model.dense.eval()
    elif not dense and kind != "hashee":
        raise BundleError(f"{bundle} is a HashEE bundle but {reference} holds a dense model; pass --reference "
                          f"with the HashEE run it was exported from")
    tokenizer = AutoTokenizer.from_pretrained(str(bundle / TOKENIZER_DIR))
    max_length = int(max_length or meta.get("max_length") or 512)
    regression = meta.get("task", {}).get("problem_type") == "regression"
    examples = load_examples(data_file, regression=regression)
    session = ort_session(bundle / MODEL_FILE)
    input_names = [i.name for i in session.get_inputs()]
    table = None if dense else np.load(bundle / TABLE_FILE, allow_pickle=False).astype(np.int64)
    worst, agree, correct = 0.0, 0, 0
    gold = None
    if examples.has_labels and not regression:
        label2id = {str(v): int(k) for k, v in meta.get("task", {}).get("id2label", {}).items()} or None
        try:
            gold = examples.label_ids(label2id)
        except DataError:
            gold = None
    for start in tqdm(range(0, len(examples), batch_size), desc="validate", disable=not progress, unit="batch"):
        stop = start + batch_size
        pairs = examples.pairs[start:stop] if examples.pairs is not None else None
        encoded = _encode(tokenizer, examples.texts[start:stop], pairs, max_length)
        if dense:
            feed, ref = dense_reference(model, encoded, input_names)
        else:
            feed, ref = hashee_reference(model, encoded, input_names)
            if "exit_masks" in input_names:  # from the bundle's own table
                exits = table[feed["input_ids"]] * (feed["attention_mask"] != 0)
                feed["exit_masks"] = np.stack([exits >= layer for layer in range(1, table_depth(meta) + 1)])
            else:  # --embed-exit-table: the graph looks its table up from input_ids
                feed.pop("exit_masks", None)
        (logits,) = session.run(["logits"], feed)
        worst = max(worst, float(np.max(np.abs(logits - ref["logits"]))))
        if not regression:
            predicted = logits.argmax(-1)
            agree += int((predicted == ref["logits"].argmax(-1)).sum())
            if gold is not None:
                correct += int((predicted == gold[start:stop]).sum())
    count = len(examples)
    result = BundleValidation(bundle, Path(data_file), count, worst, None if regression else agree / count,
                              None if gold is None else correct / count, tolerance)
    if raise_on_failure and not result.ok:
        raise ValidationError(f"{bundle}: max |difference| of logits {worst:.3g} exceeds {tolerance:g} over "
                              f"{count} examples of {data_file}")
    return result


def table_depth(meta: dict[str, Any]) -> int:
    """L of a HashEE bundle (from ``hashee.json``)."""
    return int(meta["backbone"]["num_layers"])
