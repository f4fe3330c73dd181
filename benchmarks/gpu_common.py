"""What the GPU benchmark scripts share: their common options, samples/s as the median of timed passes, and
writing a report.  Imported by gpu_check.py, gpu_profile.py and layouts_check.py (this folder on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence


def script_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the options every GPU script takes: --out, --model, --device, --repeats, --limit."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", help="a trained HashEE run folder (default: untrained head on all-MiniLM-L6-v2)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, help="use only the first N dev sentences")
    return parser


def cuda_missing(device: str, script: str) -> bool:
    """Whether ``device`` is cuda but torch sees no GPU (then said on stderr, as ``script``'s error)."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        print(f"{script}: error: no CUDA GPU is visible (torch.cuda.is_available() is False)", file=sys.stderr)
        return True
    return False


def samples_per_second(fn: Callable[[Any], Any], batches: Sequence[Any], repeats: int, sync: Callable[[], None],
                       warmup: int | None = None,
                       rows: Callable[[Any], int] = lambda b: b["input_ids"].shape[0]) -> float:
    """samples/s of ``fn`` over ``batches``: the median of ``repeats`` timed passes, ``sync`` after each.

    ``fn`` first runs on the first ``warmup`` batches, or on every batch when ``warmup`` is None (which
    captures every CUDA graph before timing); ``rows`` counts the samples of a batch.
    """
    for batch in batches if warmup is None else batches[:warmup]:
        fn(batch)
    sync()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            fn(batch)
        sync()
        runs.append(time.perf_counter() - start)
    return sum(rows(b) for b in batches) / statistics.median(runs)


def write_report(out: Path, name: str, report: dict[str, Any], markdown: Callable[[dict[str, Any]], str],
                 quiet: bool = False) -> None:
    """``out/NAME.json`` and ``out/NAME.md`` (``markdown(report)``, also printed unless ``quiet``)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / f"{name}.md").write_text(text)
    if not quiet:
        print(text)
