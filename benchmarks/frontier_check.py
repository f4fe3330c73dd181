"""Read-only check of a ``hashee frontier`` folder: would resuming it with these data reuse every run?

    python benchmarks/frontier_check.py DIR --train FILE --dev FILE [--backbone PATH] [--text-column C ...]

For every finished run under ``DIR/runs`` it asks :func:`hashee.bench.frontier.finished` (recipe, train and
dev files, backbone, columns) and checks that its point would still get its folder's name; then it
collects the reports' content with :func:`hashee.bench.frontier.collect`, in memory.  It writes nothing.
Exit status 1 when a run would be refused or renamed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hashee.bench import frontier


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--train", required=True, type=Path)
    parser.add_argument("--dev", required=True, type=Path)
    parser.add_argument("--backbone", type=Path)
    for key in ("text", "pair", "label"):
        parser.add_argument(f"--{key}-column")
    args = parser.parse_args(argv)
    columns = {f"{key}_column": (int(value) if value is not None and value.isdigit() else value)
               for key in ("text", "pair", "label") for value in [getattr(args, f"{key}_column")]}
    job = frontier.FrontierJob(args.train, args.dev, args.folder, backbone=args.backbone, columns=columns,
                               progress=False)
    checked = frontier.check_runs(job)
    for run, problem in checked:
        print(f"{'ok     ' if problem is None else 'REFUSED'} {run.relative_to(args.folder)}"
              + ("" if problem is None else f": {problem}"))
    report = frontier.collect(args.folder)
    scored = sum(len(p["scores"]) for p in report["points"])
    print(f"{len(checked)} finished runs, {sum(p is None for _, p in checked)} reused on resume; collect: "
          f"{len(report['points'])} points, {scored} scores ({report['task']}, {report['metric']})")
    return 0 if checked and all(problem is None for _, problem in checked) else 1


if __name__ == "__main__":
    sys.exit(main())
