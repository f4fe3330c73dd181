"""Named benchmark configurations: which data a ``hashee bench`` run measures.

``hashee bench BUNDLE --data NAME`` accepts one of these names instead of a file:

* ``sst2-dev``: SST-2 development set, single short sentences (about 20-25 tokens);
* ``snli-dev``: SNLI development set, sentence pairs (the first ``limit`` rows);
* ``long``: long inputs of 256-512 tokens, made by joining consecutive real SST-2 sentences.

The ELUE data folder is ``$HASHEE_ELUE_DIR`` or ``../shared/data/elue`` next to the working folder or
the source checkout; where it is missing, the SST-2 configurations fall back to the bundled sample
(``hashee/samples/sst2``) and say so.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hashee.errors import DataError


@dataclass(frozen=True)
class BenchConfig:
    """One named benchmark configuration."""

    name: str
    description: str
    source: str  # path inside the ELUE folder
    limit: int | None = None  # default cap on the number of examples
    long: bool = False  # join sentences into 256-512 token inputs


CONFIGS: dict[str, BenchConfig] = {
    "sst2-dev": BenchConfig("sst2-dev", "SST-2 dev: single short sentences", "SST-2/dev.tsv"),
    "snli-dev": BenchConfig("snli-dev", "SNLI dev: sentence pairs (first 2,000)", "SNLI/dev.tsv", limit=2000),
    "long": BenchConfig("long", "long inputs: 256-512 tokens of joined SST-2 dev sentences", "SST-2/dev.tsv",
                        limit=128, long=True),
}


def elue_dir() -> Path | None:
    """The ELUE data folder, or ``None`` where it is not found."""
    candidates = [os.environ.get("HASHEE_ELUE_DIR")]
    candidates += [str(Path.cwd().parent / "shared" / "data" / "elue"), str(Path.cwd() / "shared" / "data" / "elue"),
                   str(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "elue")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "SST-2" / "dev.tsv").is_file():
            return Path(candidate)
    return None


def _read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        return header, [row for row in reader if row]


def build_long_inputs(sentences: list[str], tokenizer_file: Path, low: int = 256, high: int = 512,
                      count: int = 128) -> list[str]:
    """Join consecutive sentences until each text has ``low..high`` tokens (with [CLS]/[SEP])."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    lengths = [len(e.ids) - 2 for e in tokenizer.encode_batch(sentences)]
    texts: list[str] = []
    current: list[str] = []
    tokens = 2
    target = low
    index = 0
    rounds = 0
    while len(texts) < count and rounds < 50:
        sentence, length = sentences[index], lengths[index]
        index += 1
        if index == len(sentences):
            index, rounds = 0, rounds + 1
        if tokens + length > high:
            continue
        current.append(sentence)
        tokens += length
        if tokens >= target:
            texts.append(" ".join(current))
            current, tokens = [], 2
            target = low + (len(texts) * 61) % (high - low)  # spread the lengths over 256..512
    if not texts:
        raise DataError(f"could not build any {low}-{high} token input from {len(sentences)} sentences")
    return texts


def resolve_data(data: str, output_dir: Path, tokenizer_file: Path, limit: int | None = None) -> dict[str, Any]:
    """``{"name", "file", "description", "limit"}`` for a config name or a data file path.

    A ``long`` config writes its joined texts to ``output_dir/long.tsv`` (one ``sentence`` column).
    """
    config = CONFIGS.get(data)
    if config is None:
        path = Path(data)
        if not path.is_file():
            raise DataError(f"--data {data}: no such file and not a named configuration "
                            f"({', '.join(CONFIGS)})")
        return {"name": path.stem, "file": path, "description": f"data file {path}", "limit": limit}
    root = elue_dir()
    source = root / config.source if root is not None else None
    note = ""
    if source is None or not source.is_file():
        if not config.source.startswith("SST-2"):
            raise DataError(f"configuration {config.name} needs the ELUE data ({config.source}); set "
                            f"HASHEE_ELUE_DIR to the folder holding SST-2/ and SNLI/")
        from hashee.samples import SST2_DEV

        source, note = SST2_DEV, " (ELUE data not found: the bundled 400-sentence sample)"
    limit = limit if limit is not None else config.limit
    out = {"name": config.name, "file": source, "description": config.description + note, "limit": limit}
    if config.long:
        _, rows = _read_tsv(source)
        texts = build_long_inputs([row[0] for row in rows], tokenizer_file, count=limit or 128)
        output_dir.mkdir(parents=True, exist_ok=True)
        file = output_dir / "long.tsv"
        with open(file, "w", encoding="utf-8", newline="") as handle:  # read back with QUOTE_NONE
            handle.write("sentence\n")
            for text in texts:
                handle.write(" ".join(text.split()) + "\n")
        out.update(file=file, limit=None)
    return out
