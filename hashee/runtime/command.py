"""``hashee predict``: texts from the command line, or a file streamed in chunks to JSON lines."""

from __future__ import annotations

import itertools
import json
import sys
import warnings
from pathlib import Path
from typing import IO, Any, Sequence

from hashee.errors import DataError, InputError
from hashee.runtime.files import count_records, input_format, read_records
from hashee.runtime.inputs import TruncationWarning
from hashee.runtime.session import Session


def _line(result: dict[str, Any], item: Any) -> str:
    text = " | ".join(item) if isinstance(item, tuple) else item
    text = text.replace("\n", " ").replace("\t", " ")
    if "value" in result:
        return f"{result['value']:.4f}\t{text}"
    return f"{result['label']}\t{result['score']:.4f}\t{text}"


def run_predict(bundle: str, texts: Sequence[str], input_file: str | None = None, output_file: str | None = None,
                backend: str = "auto", device: str | None = None, threads: int | None = None, batch_size: int = 32,
                chunk_size: int = 4096, text_column: Any = None, pair_column: Any = None,
                progress: bool = True, precision: str | None = None) -> int:
    """Print ``label<TAB>score<TAB>text`` per text, or stream ``input_file`` to JSON lines; returns 0."""
    if bool(texts) == bool(input_file):
        raise InputError("pass either texts or --input FILE (not both, not neither)")
    if output_file and not input_file:
        raise InputError("--output needs --input FILE; texts on the command line are printed")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"--chunk-size must be a positive integer, got {chunk_size!r}")
    if input_file and input_file != "-":
        if not Path(input_file).is_file():
            raise DataError(f"input file {input_file} does not exist")
        input_format(Path(input_file))
    session = Session.load(bundle, backend=backend, device=device, threads=threads, precision=precision)
    print(f"hashee predict: backend {session.backend}", file=sys.stderr)
    if texts:
        for result, item in zip(session.predict(list(texts), batch_size=batch_size), texts):
            print(_line(result, item))
        return 0
    return _stream(session, input_file, output_file, batch_size, chunk_size, text_column, pair_column, progress)


def _stream(session: Any, input_file: str, output_file: str | None, batch_size: int, chunk_size: int,
            text_column: Any, pair_column: Any, progress: bool) -> int:
    from tqdm.auto import tqdm

    if output_file and Path(output_file).resolve() == Path(input_file).resolve():
        raise DataError(f"--output {output_file} is the input file; choose another path")
    total = count_records(Path(input_file)) if input_file != "-" and Path(input_file).is_file() else None
    records = read_records(input_file, text_column, pair_column)
    out: IO[str] = open(output_file, "w", encoding="utf-8") if output_file else sys.stdout
    done = truncated = 0
    try:
        with tqdm(total=total, desc="predict", unit="text", disable=not progress, file=sys.stderr) as bar:
            while True:
                chunk = list(itertools.islice(records, chunk_size))
                if not chunk:
                    break
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", TruncationWarning)
                    try:
                        results = session.predict(chunk, batch_size=batch_size)
                    except InputError as exc:
                        raise InputError(f"{input_file}, records {done + 1}..{done + len(chunk)}: {exc}") from exc
                truncated += sum(w.message.count for w in caught if isinstance(w.message, TruncationWarning))
                out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
                done += len(chunk)
                bar.update(len(chunk))
            bar.total = done  # the line count included any header and blank lines
            bar.refresh()
    finally:
        if output_file:
            out.close()
        else:
            out.flush()
    if truncated:
        print(f"hashee predict: {truncated} of {done} input(s) were longer than {session.max_length} tokens and were "
              f"truncated", file=sys.stderr)
    print(f"hashee predict: {done} prediction(s) written to {output_file or 'standard output'}", file=sys.stderr)
    return 0
