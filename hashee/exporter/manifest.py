"""What every export writes besides the graph: the manifest entries, the reference weights, the result.

Shared by the HashEE exporter (:mod:`hashee.exporter.export`) and the dense baseline
(:mod:`hashee.exporter.dense`), so both write ``hashee.json`` the same way.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hashee.bundle import REFERENCE_DIR, TOKENIZER_DIR
from hashee.errors import ExportError
from hashee.flops import EncoderDims
from hashee.lengths import max_length_limit

TOLERANCE = 1e-4  # fp32: max |difference| of every output against PyTorch


@dataclass
class ExportResult:
    """What an export wrote: the bundle folder, its ``hashee.json`` content, the time it took."""

    bundle: Path
    meta: dict[str, Any]
    seconds: float
    validation: dict[str, dict[str, float]] = field(default_factory=dict)

    def format(self) -> str:
        onnx_meta = self.meta["onnx"]
        worst = max((d for case in self.validation.values() for d in case.values()), default=0.0)
        return "\n".join([
            f"bundle: {self.bundle} ({self.meta['kind']}, target {onnx_meta['target']}, opset {onnx_meta['opset']})",
            f"validated on {len(self.validation)} input sets against PyTorch: max |difference| {worst:.3g} "
            f"(tolerance {self.meta['validation']['tolerance']:g})",
            f"export took {self.seconds:.1f} s",
        ])


class Progress:
    """One line per step on stderr, with the elapsed time."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.start = enabled, time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[export {time.perf_counter() - self.start:5.1f}s] {message}", file=sys.stderr, flush=True)


def resolve_max_length(max_length: int | None, config: Any, tokenizer: Any) -> int:
    """``max_length`` checked against the core rule (:func:`hashee.lengths.max_length_limit`), or that limit."""
    limit = max_length_limit(config, tokenizer) or 512
    if max_length is None:
        return limit
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ExportError(f"max length must be an integer >= 2, got {max_length!r}")
    if max_length > limit:
        raise ExportError(f"max length {max_length} exceeds what the model's position embeddings allow ({limit})")
    return max_length


def save_reference(model: Any, stage: Path) -> None:
    """The PyTorch weights as ``reference/`` (safetensors only: the runtime never loads a pickle)."""
    model.save_pretrained(str(stage / REFERENCE_DIR), safe_serialization=True)
    extra = sorted(p.name for p in (stage / REFERENCE_DIR).iterdir() if p.name not in ("config.json", "model.safetensors"))
    for name in extra:  # e.g. generation_config.json: not needed to rebuild an encoder classifier
        (stage / REFERENCE_DIR / name).unlink()


def describe(model_config: Any, num_layers: int) -> dict[str, Any]:
    """Backbone and task facts for ``hashee.json``."""
    dims = EncoderDims.from_config(model_config)
    heads = getattr(model_config, "num_attention_heads", None) or getattr(model_config, "n_heads", None)
    return {
        "backbone": {"family": model_config.model_type, "num_layers": num_layers, "hidden_size": dims.hidden_size,
                     "intermediate_size": dims.intermediate_size, "num_attention_heads": int(heads),
                     "vocab_size": int(model_config.vocab_size)},
        "task": {"problem_type": model_config.problem_type or ("regression" if model_config.num_labels == 1
                                                               else "single_label_classification"),
                 "num_labels": int(model_config.num_labels),
                 "id2label": {str(k): str(v) for k, v in sorted(model_config.id2label.items())}},
    }


def bundle_meta(kind: str, run_dir: Path, model_config: Any, num_layers: int, max_length: int,
                onnx: dict[str, Any], reference: bool, producer: dict[str, Any] | None = None,
                **extra: Any) -> dict[str, Any]:
    """The manifest of a new bundle (``files`` and ``format_version`` are added by ``write_meta``;
    ``validation`` once the staged graph has passed)."""
    from hashee import __version__

    return {
        "kind": kind,
        "producer": {"name": "hashee", "version": __version__, **(producer or {})},
        "source": {"run_dir": str(Path(run_dir).absolute())},
        **describe(model_config, num_layers),
        "max_length": max_length,
        **extra,
        "onnx": onnx,
        "tokenizer": TOKENIZER_DIR,
        **({"reference": REFERENCE_DIR} if reference else {}),
    }


def validation_entry(report: dict[str, dict[str, float]], tolerance: float = TOLERANCE) -> dict[str, Any]:
    """The manifest's ``validation`` entry: every case's max |difference| per output."""
    return {"tolerance": tolerance, "cases": report}
