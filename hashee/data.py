"""Reading labelled text files (TSV, CSV, JSON lines) and tokenising them for training.

:func:`load_examples` turns a file into :class:`Examples` (texts, optional second texts of a pair,
labels) and :func:`tokenize_examples` turns those into a map-style dataset of feature dicts that a
``DataLoader`` or the Hugging Face ``Trainer`` can batch with ``DataCollatorWithPadding``.

Files are read as they come: a UTF-8 byte-order mark, CRLF line ends, stray quote characters in
TSV (read with quoting disabled) and blank trailing lines are all fine.  Every problem a user can
cause raises :class:`~hashee.errors.DataError` naming the file, and the line where there is one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from hashee.errors import DataError

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}

# Column names recognised in a header, in order of preference.
PAIR_SCHEMAS = (
    ("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"),
    ("question", "sentence"), ("question", "passage"), ("text_a", "text_b"), ("text1", "text2"),
    ("sentence_a", "sentence_b"), ("query", "document"),
)
TEXT_CANDIDATES = ("sentence", "text", "sentence1", "premise", "question", "question1", "text_a",
                   "text1", "sentence_a", "review", "content", "document", "input", "query", "utterance")
PAIR_CANDIDATES = ("sentence2", "hypothesis", "question2", "text_b", "text2", "sentence_b", "passage",
                   "text_pair", "pair")
LABEL_CANDIDATES = ("label", "labels", "gold_label", "score", "target", "class", "category",
                    "sentiment", "y")
OTHER_HEADER_NAMES = ("id", "idx", "index", "guid", "uid")

_INT_RE = re.compile(r"^[+-]?\d+$")
_FLAG_HINT = "name the columns with --text-column, --pair-column and --label-column"


@dataclass
class Examples:
    """Texts (and optional second texts of pairs) with their labels, as read from one file.

    Attributes:
        texts: the first (or only) text of every example.
        pairs: the second text of every example for sentence-pair tasks, else ``None``.
        labels: ``None`` for an unlabelled file; for classification a list of label names (``str``,
            integers written in decimal); for regression a float64 array.
        label_names: sorted distinct label names for classification (integers sorted numerically),
            ``None`` for regression or unlabelled files.
        is_regression: whether the labels are real-valued scores.
        source: the file the examples came from.
        columns: the columns used, as ``{"text": ..., "pair": ..., "label": ...}``.
    """

    texts: list[str]
    pairs: list[str] | None = None
    labels: list[str] | np.ndarray | None = None
    label_names: list[str] | None = None
    is_regression: bool = False
    source: Path | None = None
    columns: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def has_labels(self) -> bool:
        """Whether the file had a label column."""
        return self.labels is not None

    def inputs(self) -> list[str] | list[tuple[str, str]]:
        """The model inputs: one string per example, or ``(text, pair)`` tuples for pair tasks."""
        if self.pairs is None:
            return list(self.texts)
        return list(zip(self.texts, self.pairs))

    def label_ids(self, label2id: dict[str, int] | None = None) -> np.ndarray:
        """Labels as model targets: int64 class ids (via ``label2id``, default sorted names) or floats.

        Raises :class:`DataError` when the file has no labels or a label is not in ``label2id``.
        """
        where = f" in {self.source}" if self.source else ""
        if self.labels is None:
            raise DataError(f"there are no labels{where}; {_FLAG_HINT} (--label-column)")
        if self.is_regression:
            return np.asarray(self.labels, dtype=np.float64)
        if label2id is None:
            label2id = {name: i for i, name in enumerate(self.label_names or [])}
        label2id = {str(k): int(v) for k, v in label2id.items()}
        unknown = sorted(set(self.labels) - set(label2id), key=_label_sort_key)
        if unknown:
            raise DataError(
                f"labels {unknown[:5]}{where} are not among the model's labels "
                f"{sorted(label2id, key=_label_sort_key)}; "
                f"use a file with the same label set as the training data"
            )
        return np.asarray([label2id[name] for name in self.labels], dtype=np.int64)


def detect_columns(names: Sequence[str], text: str | None = None, pair: str | None = None,
                   guess_pair: bool = False) -> tuple[str | None, str | None]:
    """The text and pair columns among header (or field) ``names``, matched case-insensitively: the column
    detection every reader shares (training data, ``predict --input``, ``infer``).

    ``text``/``pair`` are columns the user named (kept).  Without ``text``: the first pair schema whose two
    names are present (``sentence1``/``sentence2``, ``premise``/``hypothesis``, ...; it must agree with a
    named ``pair``), else the first text name, with a known second-text column beside it.  With ``text``
    named, a pair is guessed only when ``guess_pair``.  Returns ``(text or None, pair or None)``.
    """
    lowered: dict[str, str] = {}
    for name in names:
        lowered.setdefault(str(name).strip().lower(), name)
    guessed = text is None
    if text is None:
        for first, second in PAIR_SCHEMAS:
            if first in lowered and second in lowered and pair in (None, lowered[second]):
                return lowered[first], lowered[second]
        text = next((lowered[c] for c in TEXT_CANDIDATES if c in lowered), None)
    if pair is None and text is not None and (guessed or guess_pair):
        pair = next((lowered[c] for c in PAIR_CANDIDATES if c in lowered and lowered[c] != text), None)
    return text, pair


def label_mapping(label_names: Sequence[str]) -> tuple[dict[int, str], dict[str, int]]:
    """``(id2label, label2id)`` for sorted label names, as stored on a model's config."""
    id2label = {i: str(name) for i, name in enumerate(label_names)}
    return id2label, {name: i for i, name in id2label.items()}


def load_examples(path: str | Path, text_column: str | int | None = None, pair_column: str | int | None = None,
                  label_column: str | int | None = None, *, regression: bool | None = None) -> Examples:
    """Read a ``.tsv``, ``.csv`` or ``.jsonl``/``.json`` (JSON lines) file of labelled texts.

    Columns are found from the header (``sentence``/``text``/``premise``..., ``sentence2``/
    ``hypothesis``..., ``label``/``score``...) unless named; for a file without a header, pass
    0-based column indices.  A file without a label column loads with ``labels=None``.  Labels that
    are all integers (or any non-numeric strings) are classes; real numbers mean regression, unless
    ``regression`` forces the choice.

    Raises:
        DataError: missing, empty or unreadable file, unknown format, unrecognised header, malformed
            row (with its line number), missing or non-numeric labels.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if not path.is_file():
        raise DataError(f"{path} is not a file; pass a .tsv, .csv or .jsonl data file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: unknown data format {path.suffix or '(no extension)'!r}; use one of "
            f"{', '.join(sorted(FORMATS))}"
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # no newline translation: quoted CSV fields keep their CRLF
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({exc.reason}); re-save the file as UTF-8") from exc
    if not text.strip():
        raise DataError(f"{path} is empty")
    flags = {"text": text_column, "pair": pair_column, "label": label_column}
    if fmt == "jsonl":
        header, rows = _read_json(path, text, flags)
    else:
        header, rows = _read_delimited(path, text, fmt, flags)
    columns = _resolve_columns(path, header, flags, json_fields=fmt == "jsonl")
    if not rows:
        raise DataError(f"{path} has a header but no data rows")
    if fmt == "jsonl":
        positions = dict(columns)
    else:
        width = len(rows[0][1])
        positions = {role: (None if key is None else key if isinstance(key, int) else header.index(key))
                     for role, key in columns.items()}
        for role, index in positions.items():
            if index is not None and index >= width:
                raise DataError(f"{path}: --{role}-column {index} is out of range (the file has {width} columns)")
    return _build(path, rows, columns, positions, regression)


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or (isinstance(value, str) and value.isdigit())


def _known_name(name: str) -> bool:
    name = name.strip().lower()
    return name in TEXT_CANDIDATES or name in PAIR_CANDIDATES or name in LABEL_CANDIDATES or name in OTHER_HEADER_NAMES


def _read_delimited(path: Path, text: str, fmt: str, flags: dict) -> tuple[list[str] | None, list[tuple[int, list]]]:
    """Rows of a TSV/CSV file as ``(line number, fields)``; the header (or ``None``) separately."""
    if fmt == "tsv":
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=",")
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for fields in reader:
            if fields and not (len(fields) == 1 and not fields[0].strip()):  # skip blank lines
                rows.append((start, fields))  # the line where the row starts (quoted fields may span lines)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: cannot parse this {fmt.upper()} row ({exc})") from exc
    if not rows:
        raise DataError(f"{path} is empty")
    first = [f.strip() for f in rows[0][1]]
    named = [v for v in flags.values() if v is not None and not _is_index(v)]
    has_header = any(_known_name(f) for f in first) or bool(named)  # column names imply a header
    header = first if has_header else None
    if has_header:
        rows = rows[1:]
    width = len(header) if header is not None else len(rows[0][1])
    for line, fields in rows:
        if len(fields) != width:
            hint = " (a tab inside a text?)" if fmt == "tsv" else " (an unbalanced quote?)"
            raise DataError(
                f"{path}:{line}: expected {width} columns{' as in the header' if header else ''}, "
                f"found {len(fields)}{hint}"
            )
    return header, rows


def _read_json(path: Path, text: str, flags: dict) -> tuple[list[str] | None, list[tuple[int, dict]]]:
    """Records of a JSON-lines file (or a JSON array of objects) as ``(line number, dict)``."""
    for name, value in flags.items():
        if value is not None and _is_index(value):
            raise DataError(f"{path}: JSON records have named fields; pass a field name to --{name}-column, "
                            f"not {value!r}")
    records: list[tuple[int, Any]] = []
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(data, list):
            raise DataError(f"{path}: expected JSON lines or a JSON array of objects, got a {type(data).__name__}")
        records = [(1, item) for item in data]  # line numbers are unknown inside one JSON document
    else:
        for line_no, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 is text
            if not line.strip():
                continue
            try:
                records.append((line_no, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: invalid JSON ({exc.msg}); one JSON object per line "
                                f"expected") from exc
    for line_no, record in records:
        if not isinstance(record, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
    if not records:
        raise DataError(f"{path} is empty")
    return list(records[0][1].keys()), records


def _resolve_columns(path: Path, header: list[str] | None, flags: dict, json_fields: bool = False) -> dict[str, Any]:
    """Map text/pair/label to a header name or column index, from the flags or the header."""
    columns: dict[str, Any] = {}
    if header is None:
        for role, value in flags.items():
            if value is not None and not _is_index(value):
                raise DataError(f"{path} has no header row, so column {value!r} cannot be found; "
                                f"pass a 0-based column index to --{role}-column instead")
        if flags["text"] is None:
            raise DataError(f"{path}: no recognisable header row; {_FLAG_HINT} (0-based indices for a "
                            f"file without a header, e.g. --text-column 0 --label-column 1)")
        return {role: (int(value) if value is not None else None) for role, value in flags.items()}
    lowered = {h.strip().lower(): h for h in header}
    for role, value in flags.items():
        if value is None:
            columns[role] = None
        elif isinstance(value, str) and value in header:
            columns[role] = value
        elif _is_index(value):
            if int(value) >= len(header):
                raise DataError(f"{path}: --{role}-column {value} is out of range (the file has {len(header)} columns)")
            columns[role] = header[int(value)]
        else:
            hint = "" if json_fields else "; for a file without a header pass 0-based column indices"
            raise DataError(f"{path}: no column {value!r} for --{role}-column; the "
                            f"{'first record has the fields' if json_fields else 'header (first row) has'} "
                            f"{header}{hint}")
    if columns["text"] is None:
        columns["text"], columns["pair"] = detect_columns(header, None, columns["pair"])
    if columns["text"] is None:
        raise DataError(f"{path}: cannot tell which column holds the text (header: {header}); {_FLAG_HINT}")
    if columns["label"] is None:
        columns["label"] = next((lowered[c] for c in LABEL_CANDIDATES if c in lowered), None)
    used = [c for c in columns.values() if c is not None]
    if len(set(used)) != len(used):
        raise DataError(f"{path}: the same column is used twice ({columns}); {_FLAG_HINT}")
    return columns


def _label_text(value: Any) -> str | None:
    """A JSON or text label as a string (``None`` when missing)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value.strip()
    return None


def _field(path: Path, line: int, row: Any, key: Any) -> Any:
    if isinstance(row, dict) and key not in row:
        raise DataError(f"{path}:{line}: the record has no {key!r} field")
    return row[key]


def _label_sort_key(name: str) -> tuple:
    return (0, int(name), "") if _INT_RE.match(name) else (1, 0, name)


def _build(path: Path, rows: list[tuple[int, Any]], columns: dict[str, Any], positions: dict[str, Any],
           regression: bool | None) -> Examples:
    texts: list[str] = []
    pairs: list[str] | None = [] if columns["pair"] is not None else None
    raw_labels: list[str] | None = [] if columns["label"] is not None else None
    label_lines: list[int] = []
    for line, row in rows:
        for role, target in (("text", texts), ("pair", pairs)):
            if target is None:
                continue
            value = _field(path, line, row, positions[role])
            if not isinstance(value, str):
                raise DataError(f"{path}:{line}: the {role} field {columns[role]!r} is not a string ({value!r})")
            target.append(value)
        if raw_labels is not None:
            label = _label_text(_field(path, line, row, positions["label"]))
            if not label:
                raise DataError(f"{path}:{line}: the label field {columns['label']!r} is empty or not a "
                                f"number/string; every row of a labelled file needs a label")
            raw_labels.append(label)
            label_lines.append(line)
    examples = Examples(texts=texts, pairs=pairs, source=path, columns=dict(columns))
    if raw_labels is None:
        return examples
    all_int = all(_INT_RE.match(v) for v in raw_labels)
    floats = _parse_floats(raw_labels)
    numeric = floats is not None or all(_is_number(v) for v in raw_labels)  # NaN/inf are numbers too
    is_regression = regression if regression is not None else (not all_int and numeric)
    if is_regression:
        if floats is None:
            bad = next(i for i, v in enumerate(raw_labels) if _to_float(v) is None)
            raise DataError(f"{path}:{label_lines[bad]}: regression needs finite numeric labels, found "
                            f"{raw_labels[bad]!r}")
        examples.labels = np.asarray(floats, dtype=np.float64)
        examples.is_regression = True
        return examples
    names = [str(int(v)) if _INT_RE.match(v) else v for v in raw_labels]
    examples.labels = names
    examples.label_names = sorted(set(names), key=_label_sort_key)
    return examples


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _to_float(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _parse_floats(values: Iterable[str]) -> list[float] | None:
    out = []
    for value in values:
        number = _to_float(value)
        if number is None:
            return None
        out.append(number)
    return out


class TokenizedDataset:
    """A map-style dataset (``len`` and indexing) of feature dicts: ``input_ids``, ``attention_mask``,
    ``token_type_ids`` when the tokenizer makes them, and ``labels`` when the examples have labels.

    Features are unpadded lists; batch them with ``transformers.DataCollatorWithPadding``.
    """

    def __init__(self, features: list[dict[str, Any]]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]

    @property
    def lengths(self) -> list[int]:
        """Number of tokens of every example."""
        return [len(f["input_ids"]) for f in self.features]


def tokenize_examples(examples: Examples, tokenizer: Any, max_length: int = 128,
                      label2id: dict[str, int] | None = None, chunk_size: int = 2048) -> TokenizedDataset:
    """Tokenise ``examples`` (truncated to ``max_length`` tokens, not padded) into a dataset.

    Labels become class ids through ``label2id`` (default: the examples' sorted label names) or
    floats for regression; an unlabelled file gives features without ``labels``.
    """
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise DataError(f"max_length must be an integer >= 2 (room for the special tokens), got {max_length!r}")
    labels = examples.label_ids(label2id) if examples.labels is not None else None
    names = None
    features: list[dict[str, Any]] = []
    for start in range(0, len(examples), chunk_size):
        stop = min(start + chunk_size, len(examples))
        pairs = examples.pairs[start:stop] if examples.pairs is not None else None
        encoded = tokenizer(examples.texts[start:stop], pairs, truncation=True, max_length=max_length)
        names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        for i in range(stop - start):
            feature = {k: list(encoded[k][i]) for k in names}
            if labels is not None:
                feature["labels"] = float(labels[start + i]) if examples.is_regression else int(labels[start + i])
            features.append(feature)
    return TokenizedDataset(features)
