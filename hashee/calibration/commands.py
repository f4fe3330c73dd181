"""`hashee hash`: build (or calibrate) an exit table from a tokenizer and a data file, and save it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hashee.calibration.budget import calibrate_budget, texts_flops
from hashee.calibration.exit_tables import build_exit_table
from hashee.data import load_examples
from hashee.errors import BackboneError, HashConfigError
from hashee.flops import EncoderDims


def _load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise BackboneError(f"tokenizer folder {path} does not exist; pass a Hugging Face tokenizer or model folder")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise BackboneError(f"cannot load a tokenizer from {path}: {exc}") from exc


def _input_embeddings(model_path: str | Path) -> Any:
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(str(model_path))
    except (OSError, ValueError) as exc:
        raise BackboneError(f"the cluster kind needs model weights; cannot load a model from {model_path}: {exc}") from exc
    return model.get_input_embeddings().weight.detach()


def _dims_for(path: str | Path, num_layers: int) -> Any:
    """FLOPs sizes of the model in ``path`` when it has a config, else MiniLM sizes with L layers."""
    if (Path(path) / "config.json").is_file():
        from transformers import AutoConfig

        dims = EncoderDims.from_config(AutoConfig.from_pretrained(str(path)))
        if dims.num_layers == num_layers:
            return dims
    return EncoderDims(num_layers, 384, 1536)


def run_hash_command(tokenizer_path: str | Path, data: str | Path | None, kind: str, num_layers: int,
                     num_buckets: int, output_dir: str | Path, target_speedup: float | None = None,
                     seed: int = 0, unseen: str | int = "last", model_path: str | Path | None = None,
                     max_length: int = 128, text_column: Any = None, pair_column: Any = None,
                     label_column: Any = None) -> str:
    """Build the table, save it to ``output_dir`` and return a short human-readable report."""
    if target_speedup is not None and kind != "frequency":
        raise HashConfigError(f"--target-speedup calibrates frequency buckets; it cannot be used with --kind {kind}")
    if data is None and (kind in ("frequency", "mi") or target_speedup is not None):
        raise HashConfigError(f"--kind {kind}{' with --target-speedup' if target_speedup else ''} needs --data FILE")
    tokenizer = _load_tokenizer(tokenizer_path)
    examples = None
    if data is not None:
        examples = load_examples(data, text_column, pair_column, label_column)
    texts = examples.inputs() if examples is not None else None
    dims = _dims_for(model_path or tokenizer_path, num_layers)
    if target_speedup is not None:
        table = calibrate_budget(tokenizer, texts, target_speedup, num_layers, num_buckets, dims=dims,
                                 unseen=unseen, max_length=max_length)
    else:
        labels = None
        if kind == "mi":
            if examples.labels is None:
                raise HashConfigError(f"--kind mi needs labels; {data} has no label column (--label-column)")
            labels = examples.labels
        embeddings = _input_embeddings(model_path or tokenizer_path) if kind == "cluster" else None
        table = build_exit_table(kind, tokenizer, texts=texts, labels=labels, num_layers=num_layers,
                                 num_buckets=num_buckets, embeddings=embeddings, seed=seed, unseen=unseen)
    table.save(output_dir)
    counts = table.histogram()
    lines = [f"wrote a {table.kind} exit table for {table.vocab_size} ids (L={num_layers}, B={num_buckets}) "
             f"to {output_dir}",
             "ids per exit layer: " + ", ".join(f"{layer}: {n}" for layer, n in counts.items() if n)]
    if texts:
        report = texts_flops(table, tokenizer, texts, dims, max_length)
        lines.append(f"on {data} ({report.num_sequences} texts): FLOPs reduction {report.speedup:.2f}x "
                     f"(dense {report.dense_flops / 1e9:.2f} GFLOPs -> HashEE {report.hashee_flops / 1e9:.2f})")
    return "\n".join(lines)
