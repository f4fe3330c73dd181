"""The deployment benchmark suite: every named configuration through ``hashee bench``, one after another.

    python benchmarks/suite.py BUNDLE [--dense BUNDLE_OR_RUN] [--configs sst2-dev,snli-dev,long]
                               [--repeats 5] [-o benchmarks/results]

Configurations (``hashee.bench.configs.CONFIGS``): ``sst2-dev`` (short single sentences), ``snli-dev``
(sentence pairs, first 2,000), ``long`` (128 inputs of 256-512 tokens joined from real SST-2 sentences;
the bundle needs a max length of 512).  Each writes ``results.json``, ``results.md`` and
``throughput.png`` into ``OUT/NAME/``; ``OUT/suite.md`` collects the tables.  ``benchmarks/results/``
is git-ignored: curated tables go into ``benchmarks/README.md``.  Metrics on a configuration whose
labels the model was not trained for (SNLI on an SST-2 model) are reported as n/a with the reason.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SUITE = {"sst2-dev": "1,8,32,128", "snli-dev": "1,8,32,128", "long": "1,8,32"}


def main(argv: list[str] | None = None) -> int:
    from hashee.cli import main as hashee

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--dense", help="dense bundle or run folder (default: the bundle's own weights, dense)")
    parser.add_argument("--configs", default=",".join(SUITE))
    parser.add_argument("--backends", default="torch,onnxruntime,tensorrt")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int)
    parser.add_argument("-o", "--output", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    output = Path(args.output)
    tables = []
    for name in args.configs.split(","):
        if name not in SUITE:
            parser.error(f"unknown configuration {name!r}; choose from {', '.join(SUITE)}")
        command = ["bench", args.bundle, "--data", name, "--batch-sizes", SUITE[name], "--backends", args.backends,
                   "--repeats", str(args.repeats), "-o", str(output / name)]
        command += ["--dense", args.dense] if args.dense else []
        command += ["--threads", str(args.threads)] if args.threads else []
        print(f"== suite: hashee {' '.join(command)}", file=sys.stderr, flush=True)
        status = hashee(command)
        if status:
            return status
        tables.append((output / name / "results.md").read_text())
    (output / "suite.md").write_text("\n\n".join(tables))
    print(f"suite: {output / 'suite.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
