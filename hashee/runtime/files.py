"""Streaming input files for ``hashee predict --input``: one record at a time, bounded memory.

``.txt``: one text per line (every line, blank ones included, so output line n answers input line n).
``.tsv`` / ``.csv``: a header naming the text (and pair) columns as :mod:`hashee.data` recognises them
(``sentence``, ``text``, ``sentence1``/``sentence2``, ``premise``/``hypothesis``...), or no header and
the text in column 0; ``--text-column``/``--pair-column`` name or number them.
``.jsonl``: one object per line with those field names (or a bare JSON string per line).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import IO, Any, Iterator

from hashee.data import detect_columns, looks_like_header
from hashee.errors import DataError

FORMATS = {".txt": "txt", ".text": "txt", ".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl"}
Record = Any  # str or (str, str)


def input_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown input format {path.suffix or '(no extension)'!r}; use .txt, .tsv, .csv or .jsonl")
    return fmt


def count_records(path: Path) -> int:
    """Lines of the file (an upper bound on its records, for the progress bar), read in 1 MiB blocks."""
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _named(header: list[str], flag: Any, what: str, path: Path) -> str | int | None:
    """The header name (or a bare index) a --text-column/--pair-column flag names; ``None`` when not given."""
    if flag is None:
        return None
    if isinstance(flag, int) or str(flag).isdigit():
        return int(flag)
    names = [h.strip().lower() for h in header]
    if str(flag).lower() not in names:
        raise DataError(f"{path}: no column {flag!r} in the header {header}; pass --{what}-column with a name or index")
    return header[names.index(str(flag).lower())]


def _header_columns(header: list[str], text_column: Any, pair_column: Any, path: Path) -> tuple[int | None, int | None]:
    """Indices of the text and pair columns: named by the flags, else detected as :mod:`hashee.data` does."""
    text, pair = _named(header, text_column, "text", path), _named(header, pair_column, "pair", path)
    named_text = header[text] if isinstance(text, int) and text < len(header) else text
    named_pair = header[pair] if isinstance(pair, int) and pair < len(header) else pair
    found_text, found_pair = detect_columns(header, named_text, named_pair, guess_pair=True)

    def index(value: Any, name: Any) -> int | None:
        return value if isinstance(value, int) else (None if name is None else header.index(name))

    return index(text, found_text), index(pair, found_pair)


def _delimited(handle: IO[str], path: Path, fmt: str, text_column: Any, pair_column: Any) -> Iterator[Record]:
    reader = csv.reader(handle, delimiter="\t" if fmt == "tsv" else ",",
                        quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)
    first = next(reader, None)
    if first is None:
        return
    named = any(f is not None and not str(f).isdigit() for f in (text_column, pair_column))
    if looks_like_header(first) or named:  # as hashee.data decides
        text, pair = _header_columns(first, text_column, pair_column, path)
        if text is None:
            raise DataError(f"{path}: no text column in the header {first}; pass --text-column")
        rows: Iterator[list[str]] = reader
    else:
        text = int(text_column or 0)
        pair = int(pair_column) if pair_column is not None else None
        rows = _chain([first], reader)
    for fields in rows:
        if not fields:
            continue
        needed = max(text, pair if pair is not None else 0)
        if needed >= len(fields):
            raise DataError(f"{path}:{reader.line_num}: the row has {len(fields)} column(s) but column {needed} is needed")
        yield (fields[text], fields[pair]) if pair is not None else fields[text]


def _chain(head: list[list[str]], tail: Iterator[list[str]]) -> Iterator[list[str]]:
    yield from head
    yield from tail


def _jsonl(handle: IO[str], path: Path, text_column: Any, pair_column: Any) -> Iterator[Record]:
    for line_number, line in enumerate(handle, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line_number}: not valid JSON ({exc.msg}); write one JSON object per line") from exc
        if isinstance(value, str):
            yield value
            continue
        if not isinstance(value, dict):
            raise DataError(f"{path}:{line_number}: expected a JSON object or string, got {type(value).__name__}")
        text_key, pair_key = detect_columns(list(value), text_column, pair_column, guess_pair=True)
        if text_key is None or text_key not in value:
            raise DataError(f"{path}:{line_number}: no text field (looked for {text_column or 'sentence, text, ...'}); "
                            f"pass --text-column")
        if pair_key is not None and pair_key not in value:
            raise DataError(f"{path}:{line_number}: no field {pair_key!r} for --pair-column")
        yield (value[text_key], value[pair_key]) if pair_key is not None else value[text_key]


def read_records(path: str | Path, text_column: Any = None, pair_column: Any = None) -> Iterator[Record]:
    """Yield the texts (or pairs) of ``path`` one at a time; ``-`` reads standard input as .txt."""
    if str(path) == "-":
        for line in sys.stdin:
            yield line.rstrip("\r\n")
        return
    path = Path(path)
    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    fmt = input_format(path)
    try:
        with open(path, encoding="utf-8-sig", newline="" if fmt in ("tsv", "csv") else None) as handle:
            if fmt == "txt":
                for line in handle:
                    yield line.rstrip("\r\n")
            elif fmt == "jsonl":
                yield from _jsonl(handle, path, text_column, pair_column)
            else:
                yield from _delimited(handle, path, fmt, text_column, pair_column)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason}); re-save the file as UTF-8") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: cannot parse this file ({exc})") from exc
