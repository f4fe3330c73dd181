"""The embedded runtime API: load a bundle once, classify text from any number of threads.

::

    from hashee.runtime import Session

    session = Session.load("bundles/sst2")            # backend="auto": TensorRT, else ORT CUDA, else ORT CPU
    session.backend                                    # e.g. "onnxruntime-cpu"
    session.predict(["a fine film .", "dull ."])       # [{"label": "1", "score": 0.97}, ...]
    session.predict([("a man sleeps", "a person rests")])  # sentence pairs
    session.run(input_ids, attention_mask)             # low level: arrays in, {"logits": ...} out

A session holds no per-call state: ``predict`` and ``run`` may be called from several threads at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import dataclasses

import numpy as np

from hashee.bundle import Bundle, open_bundle, tokenizer_config
from hashee.errors import BundleError, InputError
from hashee.exit_table import exit_masks
from hashee.runtime.batching import active_profile, check_batch_size, pad, plan_batches
from hashee.runtime.inputs import TextEncoder, normalize_texts, warn_truncated
from hashee.runtime.runners import make_runner
from hashee.prefix import is_prefix_graph, layout_feed
from hashee.runtime.runners.base import Runner


def _special(value: Any) -> str | None:
    if isinstance(value, dict):  # AddedToken serialised as a dict
        value = value.get("content")
    return value if isinstance(value, str) else None


class Session:
    """A loaded bundle: tokenizer, exit table and one backend runner."""

    def __init__(self, bundle: Bundle, runner: Runner) -> None:
        self.bundle, self.runner = bundle, runner
        pad_token = _special(tokenizer_config(bundle).get("pad_token"))
        self.encoder = TextEncoder(bundle.tokenizer_dir, bundle.max_length, pad_token)
        table = bundle.exit_table
        if table is not None and self.encoder.vocab_size > table.shape[0]:
            raise BundleError(f"the tokenizer in {bundle.tokenizer_dir} has {self.encoder.vocab_size} ids but the exit "
                              f"table only {table.shape[0]}; re-export the bundle")
        runner.activate()
        self.input_names = list(runner.input_names)
        self.uses_token_type_ids = "token_type_ids" in self.input_names
        # the prefix layout (issue 14): the host sorts each row by exit layer and feeds L masks
        self.prefix = is_prefix_graph(self.input_names)
        # a bundle exported with --embed-exit-table computes its masks in the graph from its own table
        self.embedded_table = bundle.kind == "hashee" and "exit_masks" not in self.input_names and not self.prefix

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, bundle_dir: str | Path, backend: str = "auto", device: str | None = None,
             threads: int | None = None, *, reference: str | Path | None = None, verify: bool = True,
             precision: str | None = None) -> "Session":
        """Open ``bundle_dir`` (hashes checked) and start a backend.

        Args:
            bundle_dir: a folder written by ``hashee export``.
            backend: ``auto`` (a TensorRT engine built for this GPU, else ONNX Runtime CUDA, else ONNX
                Runtime CPU), ``onnxruntime``, ``tensorrt`` (an engine from ``hashee build-engine``, see
                :mod:`hashee.runtime.runners.tensorrt`) or ``torch`` (the PyTorch reference).
            device: ``None`` (best available), ``cpu``, ``cuda`` or ``cuda:N``.
            threads: intra-op threads (ONNX Runtime; process-wide for torch); ``None`` = library default.
            reference: for ``backend="torch"``, a run folder to take the weights from when the bundle
                has no ``reference/`` folder.
            verify: check every file's sha256 (a few hundred ms for a 90 MB model).
            precision: ``fp32``, ``fp16`` or ``int8``.  On TensorRT, the engine of that precision (int8: built
                from the Q/DQ ``model.int8.onnx`` of ``hashee calibrate``); ``None``: the first of fp32 > fp16 >
                int8 engines that runs here.  On ONNX Runtime, ``int8`` is the dynamic int8 file of ``hashee
                quantize`` (``model.int8-dynamic.onnx``, CPU) and fp32 is ``model.onnx``; ``auto`` without a
                TensorRT engine of the asked precision runs ONNX Runtime (int8: the dynamic file; fp16: fp32).
                A precision the bundle does not hold raises :class:`~hashee.errors.PrecisionError` naming
                the command that adds it.

        Raises:
            BundleError, ExitTableError: the bundle is incomplete, corrupted or too new.
            BackendError: unknown backend or device, or the backend cannot run here (says what is missing).
        """
        bundle = open_bundle(bundle_dir, verify=verify)
        return cls(bundle, make_runner(bundle, backend, device, threads, reference, precision))

    @classmethod
    def for_model_file(cls, bundle: Bundle, model_file: str | Path, threads: int | None = None) -> "Session":
        """A session running another graph file of ``bundle`` (e.g. ``model.fp16.onnx``, or a staged export)
        on ONNX Runtime CPU, with this bundle's tokenizer, exit table and input checks: what validation and
        calibration feed a graph through, so they check exactly what a deployment runs."""
        from hashee.runtime.runners.onnxruntime import OnnxRuntimeRunner

        view = dataclasses.replace(bundle, model_file=Path(model_file))
        return cls(view, OnnxRuntimeRunner(view, "cpu", threads))

    @property
    def takes_exit_masks(self) -> bool:
        """Whether :meth:`run` takes exit masks: the graph has an ``exit_masks`` input (HashEE without an
        embedded table), or the prefix layout's ``exit_mask_1..L`` (built from them on the host)."""
        return "exit_masks" in self.input_names or self.prefix

    @property
    def backend(self) -> str:
        """The backend in use: ``onnxruntime-cpu``, ``onnxruntime-cuda``, ``onnxruntime-tensorrt``,
        ``tensorrt``, ``torch-cpu`` or ``torch-cuda``."""
        return self.runner.name

    @property
    def precision(self) -> str:
        """The precision of the model that runs: ``fp32``, ``fp16`` or ``int8``."""
        return str(getattr(self.runner, "precision", "fp32"))

    @property
    def labels(self) -> list[str]:
        return list(self.bundle.labels)

    @property
    def max_length(self) -> int:
        return self.bundle.max_length

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Session({str(self.bundle.path)!r}, backend={self.backend!r}, kind={self.bundle.kind!r})"

    # ------------------------------------------------------------------ low level
    def run(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None,
            exit_masks: Any = None) -> dict[str, np.ndarray]:
        """Run the graph on arrays: int ``[batch, seq]`` ids/mask (right-padded), optional segment ids and
        bool ``[L, batch, seq]`` exit masks (default: from the bundle's exit table).  Returns the outputs by
        name (``logits`` [batch, labels], and ``token_states`` where exported).

        Raises :class:`InputError` for a wrong dtype, rank, shape or value, naming the fix.
        """
        feed = self.feed(input_ids, attention_mask, token_type_ids, exit_masks)
        if feed["input_ids"].shape[0] == 0:
            return {"logits": np.zeros((0, len(self.bundle.labels)), dtype=np.float32)}
        return self.run_feed(feed)

    def run_feed(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run an already-checked feed in the packed form (``exit_masks`` [L, batch, seq] from the table);
        a prefix-layout graph gets the host's sorted plan instead (:func:`hashee.prefix.layout_feed`).
        No input checks: :meth:`run` is the checked entry point."""
        if not self.prefix:
            return self.runner.infer(feed)
        prefix_feed, plan = layout_feed(feed, self.input_names, self.bundle.num_layers, pad_id=self.encoder.pad_id)
        outputs = self.runner.infer(prefix_feed)
        restored = {"logits": plan.restore_rows(outputs["logits"])}
        if "token_states" in outputs:  # already in the original order (the graph restores it)
            restored["token_states"] = outputs["token_states"][:plan.rows, :plan.length]
        return restored

    def feed(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None,
             masks: Any = None) -> dict[str, np.ndarray]:
        """The checked graph feed :meth:`run` gives the runner (exit masks from the table unless given)."""
        ids = _integer_array("input_ids", input_ids)
        mask = _integer_array("attention_mask", attention_mask, allow_bool=True)
        self._check_ids_and_mask(ids, mask)
        feed = {"input_ids": np.ascontiguousarray(ids), "attention_mask": np.ascontiguousarray(mask)}
        self._add_token_types(feed, ids, token_type_ids)
        if self.bundle.kind == "dense":
            if masks is not None:
                raise InputError(f"{self.bundle.path} is a dense bundle without early exit; pass exit_masks=None")
            return feed
        layers = self.bundle.num_layers
        if self.embedded_table:
            if masks is not None:
                raise InputError(f"{self.bundle.path} computes its exit masks in the graph from its embedded exit "
                                 f"table; pass exit_masks=None (or export without --embed-exit-table)")
            return feed
        if masks is None:
            feed["exit_masks"] = exit_masks(ids, mask, self.bundle.exit_table, layers)
        else:
            feed["exit_masks"] = _checked_masks(masks, ids, mask, layers)
        return feed

    def _check_ids_and_mask(self, ids: np.ndarray, mask: np.ndarray) -> None:
        """Shapes, the max length, the vocabulary, and right-padded 0/1 masks that keep [CLS]."""
        if mask.shape != ids.shape:
            raise InputError(f"attention_mask has shape {mask.shape} but input_ids has {ids.shape}; they must match")
        batch, seq = ids.shape
        if batch and seq == 0:
            raise InputError("input_ids has no columns; every row needs at least its [CLS] token")
        if seq > self.bundle.max_length:
            raise InputError(f"sequence length {seq} exceeds the bundle's max length {self.bundle.max_length}; "
                             f"truncate the inputs (predict() does this for you)")
        vocab = int(self.bundle.meta["backbone"]["vocab_size"])
        if ids.size and (ids.min() < 0 or ids.max() >= vocab):
            raise InputError(f"input_ids must lie in 0..{vocab - 1}; found {ids.min()}..{ids.max()}")
        if mask.size and ((mask != 0) & (mask != 1)).any():
            raise InputError("attention_mask must hold only 0 and 1")
        if batch and (mask[:, 0] == 0).any():
            row = int(np.flatnonzero(mask[:, 0] == 0)[0])
            raise InputError(f"row {row} of attention_mask starts with padding (or is all padding); pad on the "
                             f"right and keep at least the [CLS] token")

    def _add_token_types(self, feed: dict[str, np.ndarray], ids: np.ndarray, token_type_ids: Any) -> None:
        """Checked ``token_type_ids`` into ``feed`` where the graph takes them (zeros when not given)."""
        if token_type_ids is not None:
            types = _integer_array("token_type_ids", token_type_ids)
            if types.shape != ids.shape:
                raise InputError(f"token_type_ids has shape {types.shape} but input_ids has {ids.shape}")
            if types.size and types.min() < 0:
                raise InputError("token_type_ids must be >= 0")
            if self.uses_token_type_ids:
                feed["token_type_ids"] = np.ascontiguousarray(types)
            elif types.any():
                raise InputError(f"this {self.bundle.meta['backbone']['family']} model takes no token_type_ids; "
                                 f"pass None")
        elif self.uses_token_type_ids:
            feed["token_type_ids"] = np.zeros_like(ids)

    # ------------------------------------------------------------------ texts
    def tokenize(self, texts: Sequence[Any]) -> dict[str, np.ndarray]:
        """``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the graph takes them)
        [len(texts), longest], right-padded in input order, as :meth:`predict` encodes them (truncated to
        the max length, with a warning)."""
        firsts, seconds = normalize_texts(texts)
        encoded = self.encoder.encode(firsts, seconds)
        warn_truncated(encoded.truncated, len(firsts), self.bundle.max_length)
        index = np.arange(len(firsts))
        ids, mask = pad(encoded.ids, index, self.encoder.pad_id)
        arrays = {"input_ids": ids, "attention_mask": mask}
        if self.uses_token_type_ids:
            arrays["token_type_ids"], _ = pad(encoded.types, index, 0)
        return arrays

    def predict_logits(self, texts: Sequence[Any], batch_size: int = 32, cost_aware: bool = True) -> np.ndarray:
        """float32 ``[len(texts), num_labels]`` logits, in input order (see :meth:`predict`)."""
        firsts, seconds = normalize_texts(texts)
        batch_size = check_batch_size(batch_size)
        width = len(self.bundle.labels)
        if not firsts:
            return np.zeros((0, width), dtype=np.float32)
        encoded = self.encoder.encode(firsts, seconds)
        warn_truncated(encoded.truncated, len(firsts), self.bundle.max_length)
        table, layers = self.bundle.exit_table, self.bundle.num_layers
        profile = active_profile(encoded.ids, table, layers if table is not None else 1)
        out = np.empty((len(firsts), width), dtype=np.float32)
        for index in plan_batches(profile, batch_size, cost_aware):
            ids, mask = pad(encoded.ids, index, self.encoder.pad_id)
            feed = {"input_ids": ids, "attention_mask": mask}
            if self.uses_token_type_ids:
                feed["token_type_ids"], _ = pad(encoded.types, index, 0)
            if table is not None and not self.embedded_table:
                feed["exit_masks"] = exit_masks(ids, mask, table, layers)
            out[index] = self.run_feed(feed)["logits"]
        return out

    def predict(self, texts: Sequence[Any], batch_size: int = 32, cost_aware: bool = True) -> list[dict[str, Any]]:
        """Classify (or score) texts: strings, or ``(text, text)`` pairs; never both in one call.

        Returns one dict per item, in input order: ``{"label": name, "score": probability}`` for
        classification, ``{"value": x}`` for regression.  Inputs longer than the bundle's max length are
        truncated with a :class:`~hashee.runtime.inputs.TruncationWarning` naming how many.  With
        ``cost_aware`` (default), items are grouped into batches of similar length and exit profile;
        results do not depend on it beyond float rounding.
        """
        logits = self.predict_logits(texts, batch_size, cost_aware)
        return format_predictions(logits, self.bundle)


MULTI_LABEL_THRESHOLD = 0.5  # a multi-label row holds every label whose sigmoid reaches this


def format_predictions(logits: np.ndarray, bundle: Bundle) -> list[dict[str, Any]]:
    """``{"label", "score"}`` (softmax) or ``{"value"}`` per row.

    Multi-label bundles (trained with BCE) score each label with its own sigmoid: ``label``/``score`` are
    the most probable label, and ``labels`` lists every label whose sigmoid is at least
    :data:`MULTI_LABEL_THRESHOLD` (in the bundle's label order; empty when none is).
    """
    if bundle.is_regression:
        return [{"value": float(v)} for v in logits[:, 0]]
    if bundle.problem_type == "multi_label_classification":
        probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        names = bundle.labels
        return [{"label": names[int(p.argmax())], "score": float(p.max()),
                 "labels": [names[i] for i in np.flatnonzero(p >= MULTI_LABEL_THRESHOLD)]} for p in probs]
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    best = probs.argmax(axis=1)
    labels = bundle.labels
    return [{"label": labels[int(b)], "score": float(p[b])} for b, p in zip(best, probs)]


def _integer_array(name: str, value: Any, allow_bool: bool = False) -> np.ndarray:
    """``value`` as a 2-D int64 array; InputError (with the fix) for another dtype or rank."""
    array = np.asarray(value)
    ok = np.issubdtype(array.dtype, np.integer) or (allow_bool and array.dtype == np.bool_)
    if not ok:
        raise InputError(f"{name} must hold integers, got dtype {array.dtype}; convert with "
                         f"np.asarray({name}, dtype=np.int64)")
    if array.ndim != 2:
        raise InputError(f"{name} must be 2-D [batch, sequence], got rank {array.ndim} (shape "
                         f"{array.shape}); for one text use array[None, :]")
    return array.astype(np.int64, copy=False)


def _checked_masks(masks: Any, ids: np.ndarray, mask: np.ndarray, layers: int) -> np.ndarray:
    """Caller-given exit masks as contiguous bool [L, batch, seq], padding cleared; InputError when they do not
    fit the inputs or break the rule (monotone over layers, every real token active in layer 1)."""
    batch, seq = ids.shape
    masks = np.asarray(masks)
    if masks.dtype != np.bool_ and not (np.issubdtype(masks.dtype, np.integer) and np.isin(masks, (0, 1)).all()):
        raise InputError(f"exit_masks must be bool (or 0/1 integers), got dtype {masks.dtype}; build them as "
                         f"exit_layers[None] >= np.arange(1, L + 1)[:, None, None]")
    masks = masks.astype(np.bool_, copy=False)
    if masks.ndim != 3:
        raise InputError(f"exit_masks must be 3-D [layers, batch, sequence], got rank {masks.ndim} "
                         f"(shape {masks.shape})")
    if masks.shape[0] != layers:
        raise InputError(f"exit_masks has {masks.shape[0]} layers but the model has {layers}; pass one mask "
                         f"per layer, shape [{layers}, batch, sequence]")
    if masks.shape[1:] != ids.shape:
        raise InputError(f"exit_masks has shape {masks.shape} but input_ids is {ids.shape}; expected "
                         f"[{layers}, {batch}, {seq}]")
    real = mask.astype(bool)
    masks = masks & real[None]
    if (masks[1:] & ~masks[:-1]).any():
        layer = int(np.flatnonzero((masks[1:] & ~masks[:-1]).reshape(layers - 1, -1).any(axis=1))[0]) + 2
        raise InputError(f"exit_masks are not monotone: a token is active in layer {layer} but not in layer "
                         f"{layer - 1}; a token that exits stays exited (mask[l] must imply mask[l-1])")
    if (real & ~masks[0]).any():
        raise InputError("exit_masks[0] must be True at every non-padding token: every token runs layer 1")
    return np.ascontiguousarray(masks)
