"""``hashee infer``: classify a JSONL, CSV or Parquet file in-process (``local``) or with Ray Data (``ray``).

``local`` streams the file in chunks through one :class:`hashee.runtime.Session` (bounded memory) and
writes one output file in input order.  ``ray`` reads with ``ray.data.read_json/read_csv/read_parquet``,
predicts with ``map_batches`` over an actor pool (a callable class holding one ``Session`` per actor)
and writes a folder of part files with ``write_json/write_csv/write_parquet``.  Ray does not keep row
order, so every output row carries the input's id column (``--id-column``, default ``id``): join on it.
The pool is sized so that reading and writing tasks still get a CPU: an actor pool holding every CPU
would wait forever for blocks that no task can read.

Output columns: the id column, then ``label`` and ``score`` (classification) or ``value`` (regression).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from hashee.bundle import open_bundle
from hashee.data import detect_columns
from hashee.errors import DataError, InputError, MissingDependencyError
from hashee.runtime.batching import check_batch_size
from hashee.runtime.session import Session

ENGINES = ("local", "ray")
FORMATS = ("jsonl", "csv", "parquet")
EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
              ".pq": "parquet"}
INSTALL_HINT = "pip install 'hashee[serve]'"
CHUNK = 4096


@dataclass
class InferResult:
    engine: str
    rows: int
    seconds: float
    output: Path
    workers: str = ""

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    def format(self) -> str:
        return (f"hashee infer ({self.engine}{', ' + self.workers if self.workers else ''}): {self.rows} rows in "
                f"{self.seconds:.1f} s ({self.rows_per_second:.0f} rows/s) -> {self.output}")


def detect_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    probe = path
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not files:
            raise DataError(f"{path} holds no .jsonl, .csv or .parquet files")
        probe = files[0]
    found = EXTENSIONS.get(probe.suffix.lower())
    if found is None:
        raise DataError(f"{path}: cannot tell the format from {probe.suffix or '(no extension)'!r}; pass --format")
    return found


def _first_file(path: Path) -> Path:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)[0]
    return path


def input_columns(path: Path, fmt: str) -> list[str]:
    """The column names of the input (the first file of a folder)."""
    path = _first_file(path)
    if fmt == "parquet":
        pq = _pyarrow_parquet()
        return list(pq.ParquetFile(path).schema_arrow.names)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        if fmt == "csv":
            return next(csv.reader(handle), [])
        for line in handle:
            if line.strip():
                value = json.loads(line)
                if not isinstance(value, dict):
                    raise DataError(f"{path}: each line must be a JSON object with named fields")
                return list(value)
    return []


def resolve_columns(columns: list[str], text_column: str | None, pair_column: str | None,
                    id_column: str | None, path: Path) -> tuple[str, str | None, str | None]:
    """``(text, pair or None, id or None)`` column names, detected like ``hashee predict`` does."""
    lower = {c.lower(): c for c in columns}

    def named(value: str, what: str) -> str:
        if value in columns:
            return value
        if value.lower() in lower:
            return lower[value.lower()]
        raise DataError(f"{path}: no column {value!r} for --{what}-column (columns: {', '.join(columns)})")

    text, pair = detect_columns(columns, named(text_column, "text") if text_column else None,
                                named(pair_column, "pair") if pair_column else None)
    if text is None:
        raise DataError(f"{path}: no text column among {', '.join(columns)}; pass --text-column")
    ident = named(id_column, "id") if id_column else lower.get("id")
    return text, pair, ident


class Predictor:
    """Texts in, predictions out, over column batches; Ray's ``map_batches`` makes one per actor."""

    def __init__(self, bundle: str, text: str, pair: str | None, ident: str, backend: str = "auto",
                 threads: int | None = None, batch_size: int = 32) -> None:
        self.session = Session.load(bundle, backend=backend, threads=threads)
        self.text, self.pair, self.ident, self.batch_size = text, pair, ident, batch_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        texts = [_text(v) for v in batch[self.text]]
        items: list[Any] = texts
        if self.pair is not None:
            items = list(zip(texts, (_text(v) for v in batch[self.pair])))
        results = self.session.predict(items, batch_size=self.batch_size)
        out = {self.ident: np.asarray(batch[self.ident])}
        if self.session.bundle.is_regression:
            out["value"] = np.array([r["value"] for r in results], dtype=np.float64)
        else:
            out["label"] = np.array([r["label"] for r in results], dtype=object)
            out["score"] = np.array([r["score"] for r in results], dtype=np.float64)
        return out


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return value if isinstance(value, str) else str(value)


# ---------------------------------------------------------------- local engine
def _chunks(path: Path, fmt: str, columns: list[str]) -> Iterator[dict[str, list[Any]]]:
    if fmt == "parquet":
        pq = _pyarrow_parquet()
        for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK, columns=columns):
            yield batch.to_pydict()
        return
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        if fmt == "csv":
            source: Iterator[dict[str, Any]] = csv.DictReader(handle)
        else:
            source = (json.loads(line) for line in handle if line.strip())
        for number, row in enumerate(source, 1):
            if not isinstance(row, dict):
                raise DataError(f"{path}: record {number} is not a JSON object")
            rows.append(row)
            if len(rows) == CHUNK:
                yield {c: [r.get(c) for r in rows] for c in columns}
                rows = []
    if rows:
        yield {c: [r.get(c) for r in rows] for c in columns}


class _Writer:
    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt, self.parquet = path, fmt, None
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = None if fmt == "parquet" else open(path, "w", encoding="utf-8", newline="")
        self.csv = csv.writer(self.handle) if fmt == "csv" else None
        self.header = False

    def write(self, columns: dict[str, np.ndarray]) -> None:
        names = list(columns)
        if self.fmt == "parquet":
            import pyarrow as pa

            table = pa.table({n: pa.array(list(v) if v.dtype == object else v) for n, v in columns.items()})
            if self.parquet is None:
                self.parquet = _pyarrow_parquet().ParquetWriter(str(self.path), table.schema)
            self.parquet.write_table(table)
            return
        rows = zip(*(columns[n].tolist() for n in names))
        if self.fmt == "csv":
            if not self.header:
                self.csv.writerow(names)
                self.header = True
            self.csv.writerows(rows)
        else:
            self.handle.write("".join(json.dumps(dict(zip(names, r)), ensure_ascii=False) + "\n" for r in rows))

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        if self.handle is not None:
            self.handle.close()


def _output_format(output: Path, fmt: str) -> str:
    return EXTENSIONS.get(output.suffix.lower(), fmt)


def infer_local(bundle: str, path: Path, output: Path, fmt: str, text: str, pair: str | None, ident: str | None,
                batch_size: int, backend: str, progress: bool) -> int:
    import sys

    columns = [c for c in (ident, text, pair) if c is not None]
    predictor = Predictor(bundle, text, pair, ident or "id", backend=backend, batch_size=batch_size)
    writer = _Writer(output, _output_format(output, fmt))
    done = 0
    try:
        for chunk in _chunks(path, fmt, columns):
            count = len(chunk[text])
            if ident is None:
                chunk["id"] = list(range(done, done + count))
            writer.write(predictor(chunk))
            done += count
            if progress:
                print(f"\rhashee infer: {done} rows", end="", file=sys.stderr, flush=True)
    finally:
        writer.close()
        predictor.session.close()
        if progress and done:
            print(file=sys.stderr)
    return done


# ---------------------------------------------------------------- ray engine
def actor_resources(cluster_cpus: float, actors: int) -> float:
    """CPUs each actor asks for: the pool leaves at least one CPU to reading/writing tasks."""
    if actors < 1:
        raise InputError(f"--actors must be a positive integer, got {actors!r}")
    spare = cluster_cpus - 1.0
    if spare <= 0:
        raise InputError(f"the Ray cluster has {cluster_cpus:g} CPU(s); an actor pool needs at least 2 so that "
                         f"reading tasks keep one")
    return min(1.0, spare / actors) if spare / actors < 1 else float(int(spare // actors))


def infer_ray(bundle: str, path: Path, output: Path, fmt: str, text: str, pair: str | None, ident: str,
              batch_size: int, backend: str, actors: int, gpus_per_actor: float, address: str | None,
              progress: bool) -> tuple[int, str]:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(f"--engine ray needs Ray Data; {INSTALL_HINT} (or: pip install 'ray[data]')") from None
    started_here = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=progress, logging_level="warning",
                 configure_logging=False)
        started_here = True
    try:
        ray.data.DataContext.get_current().enable_progress_bars = progress
        cpus = float(ray.cluster_resources().get("CPU", 0))
        per_actor = actor_resources(cpus, actors)
        threads = max(1, int(per_actor))
        source = str(path)
        columns = [c for c in (ident, text, pair) if c is not None]
        if fmt == "jsonl":
            ds = ray.data.read_json(source, lines=True)
        elif fmt == "csv":
            ds = ray.data.read_csv(source)
        else:
            ds = ray.data.read_parquet(source, columns=columns)
        ds = ds.select_columns(columns)
        ds = ds.map_batches(Predictor, fn_constructor_kwargs=dict(bundle=str(Path(bundle).absolute()), text=text,
                                                                  pair=pair, ident=ident, backend=backend,
                                                                  threads=threads, batch_size=min(batch_size, 64)),
                            batch_size=batch_size, batch_format="numpy", compute=_actor_pool(ray, actors),
                            num_cpus=per_actor,
                            num_gpus=gpus_per_actor or None)
        out_fmt = _output_format(output, fmt) if output.suffix else fmt
        write = {"jsonl": ds.write_json, "csv": ds.write_csv, "parquet": ds.write_parquet}[out_fmt]
        write(str(output))
        rows = count_rows(output, out_fmt)
    finally:
        if started_here:
            ray.shutdown()
    return rows, f"{actors} actor(s) x {per_actor:g} CPU"


def _actor_pool(ray: Any, actors: int) -> Any:
    """A fixed-size actor pool (``ActorPoolStrategy``; Ray 2.51 deprecated ``concurrency=`` for it)."""
    return ray.data.ActorPoolStrategy(size=actors)


def count_rows(path: Path, fmt: str) -> int:
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    total = 0
    for file in files:
        if fmt == "parquet" and file.suffix == ".parquet":
            total += _pyarrow_parquet().ParquetFile(file).metadata.num_rows
        elif fmt == "csv" and file.suffix == ".csv":
            with open(file, encoding="utf-8", newline="") as handle:
                total += max(0, sum(1 for _ in csv.reader(handle)) - 1)
        elif fmt == "jsonl" and file.suffix in (".json", ".jsonl"):
            with open(file, encoding="utf-8") as handle:
                total += sum(1 for line in handle if line.strip())
    return total


def read_results(path: str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """Every output row of a local file or a Ray output folder (any order)."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS) if path.is_dir() else [path]
    rows: list[dict[str, Any]] = []
    for file in files:
        kind = fmt or EXTENSIONS[file.suffix.lower()]
        if kind == "parquet":
            rows += _pyarrow_parquet().read_table(file).to_pylist()
        elif kind == "csv":
            with open(file, encoding="utf-8", newline="") as handle:
                rows += list(csv.DictReader(handle))
        else:
            with open(file, encoding="utf-8") as handle:
                rows += [json.loads(line) for line in handle if line.strip()]
    return rows


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError(f"Parquet files need pyarrow; {INSTALL_HINT} (or: pip install pyarrow)") from None
    return pq


def run_infer(bundle: str | Path, input_path: str | Path, output: str | Path, engine: str = "local",
              fmt: str | None = None, text_column: str | None = None, pair_column: str | None = None,
              id_column: str | None = None, batch_size: int = 256, actors: int = 1, gpus_per_actor: float = 0.0,
              address: str | None = None, backend: str = "auto", progress: bool = True) -> InferResult:
    """Classify every row of ``input_path`` and write ``output`` (see the module docstring).

    Raises:
        InputError, DataError: bad arguments, a missing input, unknown columns; ``ray`` without an id column.
        MissingDependencyError: Ray or pyarrow is needed and not installed (the message says what to install).
        BundleError, BackendError: from loading the bundle.
    """
    if engine not in ENGINES:
        raise InputError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    batch_size = check_batch_size(batch_size)
    if isinstance(gpus_per_actor, bool) or not isinstance(gpus_per_actor, (int, float)) or gpus_per_actor < 0:
        raise InputError(f"--gpus-per-actor must be >= 0, got {gpus_per_actor!r}")
    path, output = Path(input_path), Path(output)
    if not path.exists():
        raise DataError(f"input {path} does not exist")
    if output.exists() and output.resolve() == path.resolve():
        raise DataError(f"the output {output} is the input; choose another path")
    if engine == "local" and path.is_dir():
        raise InputError(f"--engine local reads one file; {path} is a folder (use --engine ray for folders)")
    fmt = detect_format(path, fmt)
    open_bundle(bundle, verify=False)  # a bad bundle fails here, before any worker starts
    text, pair, ident = resolve_columns(input_columns(path, fmt), text_column, pair_column, id_column, path)
    started = time.perf_counter()
    if engine == "local":
        rows = infer_local(str(bundle), path, output, fmt, text, pair, ident, batch_size, backend, progress)
        return InferResult(engine, rows, time.perf_counter() - started, output)
    if ident is None:
        raise InputError(f"{path} has no id column (looked for 'id'); Ray does not keep row order, so results can "
                         f"only be matched to inputs by an id: add one, or pass --id-column")
    if output.exists() and any(output.iterdir() if output.is_dir() else [output]):
        raise DataError(f"the output {output} exists and is not empty; Ray writes a folder of part files: choose a "
                        f"new path")
    rows, workers = infer_ray(str(bundle), path, output, fmt, text, pair, ident, batch_size, backend, actors,
                              gpus_per_actor, address, progress)
    return InferResult(engine, rows, time.perf_counter() - started, output, workers)
