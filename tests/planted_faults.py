"""Plant deliberate faults in a copy of hashee, one at a time, and check that the tests catch each.

    python tests/planted_faults.py [--only WORD ...] [--no-baseline] [--maxfail N]

For every fault: copy ``hashee/``, ``tests/``, ``benchmarks/`` and ``pyproject.toml`` into a fresh
temporary folder (the real tree is never edited), replace the fault's source text there (the text is
looked up across the copied package, so a module that moved keeps its fault), run the tests that
should catch it with ``PYTHONPATH`` pointing at the copy, and record which tests failed.  A first run of
all the selected tests on an unmodified copy must pass, or the table would prove nothing.

Prints a table and, last, ``planted faults: N, caught: M``; exits 1 unless every fault is caught.
Not a test module (pytest does not collect this file); it takes several minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ELUE = Path(os.environ.get("HASHEE_ELUE_DIR", ROOT.parent / "shared" / "data" / "elue"))


@dataclass
class Fault:
    name: str
    edits: list[tuple[str, str]]  # (exact source text, replacement); each text must occur in the package
    tests: list[str]  # pytest node ids / files relative to the repository root, plus "-k" expressions
    note: str = ""
    alternatives: list[list[tuple[str, str]]] = field(default_factory=list)  # the same fault in other versions
    caught_by: list[str] = field(default_factory=list)


COMPUTE_EVERY_ROW_PLAN = (
    '    active = b.op("Cast", [b.op("And", [env["exit_masks"], keep])], to=FLOAT, hint="active")\n',
    '    env["real_active"] = b.op("Cast", [b.op("And", [env["exit_masks"], keep])], to=FLOAT, hint="active")\n'
    '    everything = b.op("Or", [env["exit_masks"], b.op("Not", [env["exit_masks"]])])\n'
    '    active = b.op("Cast", [b.op("And", [everything, keep])], to=FLOAT, hint="every_real_token")\n',
)
COMPUTE_EVERY_ROW_LAYER = (
    '    return b.op(custom_ops.SCATTER_ACTIVE, [hidden, index_rows, out], domain=custom_ops.DOMAIN)\n',
    '    real = b.op("Reshape", [b.op("Gather", [env["real_active"], at], axis=0), b.const([-1, 1])])\n'
    '    keep_row = b.op("Cast", [b.op("GatherND", [real, index_rows])], to=9)\n'
    '    out = b.op("Where", [keep_row, out, rows])\n'
    '    return b.op(custom_ops.SCATTER_ACTIVE, [hidden, index_rows, out], domain=custom_ops.DOMAIN)\n',
)

MODELING_ORACLE = "tests/test_modeling.py::test_random_table_matches_masked_oracle"
MODELING_PADDED = "tests/test_modeling.py::test_sentence_alone_equals_sentence_in_padded_batch"
EXPORT = "tests/test_export.py::test_export_contract_and_agreement"

FAULTS = [
    Fault("padding as keys (PyTorch model)",
          [("key_mask = torch.arange(key_width, device=exits.device)[None, :] < lengths",
            "key_mask = torch.ones(batch, key_width, dtype=torch.bool, device=exits.device)")],
          [MODELING_PADDED, MODELING_ORACLE]),
    Fault("padding as keys (ONNX graph)",
          [('return {"key_padding": b.op("Cast", ["attention_mask"], to=TensorProto.INT32, hint="key_padding")}',
            'return {"key_padding": b.op("Cast", [b.op("Add", [b.op("Mul", ["attention_mask", b.const(0)]), '
            'b.const(1)])], to=TensorProto.INT32, hint="key_padding")}')],
          [EXPORT + "[bert-onnxruntime]", EXPORT + "[roberta-onnxruntime]"]),
    Fault("early exit ignored (PyTorch model)",
          [("exits = self.exit_table_layers[input_ids.clamp(0, self.exit_table_layers.shape[0] - 1)]",
            "exits = torch.full_like(input_ids, self.num_layers)")],
          [MODELING_ORACLE]),
    Fault("early exit ignored (runtime exit masks)",
          [("exits = table[input_ids] * (attention_mask != 0)",
            "exits = np.full_like(input_ids, num_layers) * (attention_mask != 0)")],
          ["tests/test_runtime.py::test_predict_matches_the_pytorch_reference", "tests/test_active_work.py"],
          alternatives=[[("return layer_masks(np.asarray(table)[np.asarray(input_ids)], attention_mask, num_layers)",
                          "return layer_masks(np.full(np.shape(input_ids), num_layers), attention_mask, num_layers)")]]),
    Fault("scatter to the wrong rows (PyTorch model)",
          [("(0, rows, updated)", "(0, rows.flip(0), updated)")],
          [MODELING_ORACLE]),
    Fault("scatter to the wrong rows (ONNX graph)",
          [("[hidden, index_rows, out], domain=custom_ops.DOMAIN)",
            '[hidden, b.op("Slice", [index_rows, b.const([-1]), b.const([-(2 ** 62)]), b.const([0]), '
            'b.const([-1])]), out], domain=custom_ops.DOMAIN)')],
          [EXPORT + "[bert-onnxruntime]", EXPORT + "[bert-tensorrt]"]),
    Fault("the graph computes every row (masking after, same outputs)",
          [COMPUTE_EVERY_ROW_PLAN, COMPUTE_EVERY_ROW_LAYER],
          [EXPORT + "[bert-onnxruntime]", EXPORT + "[electra-tensorrt]", "tests/test_active_work.py"],
          note="the export/oracle tests pass: only the work test can see it"),
    Fault("RoBERTa position offset removed from the max length",
          [("positions -= int(config.pad_token_id) + 1", "positions -= 0")],
          ["tests/test_edge_cases.py::test_an_input_of_exactly_the_max_length"],
          alternatives=[[('positions -= int(getattr(config, "pad_token_id", 1) or 0) + 1', "positions -= 0")]]),
    Fault("predictions reversed in hashee infer",
          [("results = self.session.predict(items, batch_size=self.batch_size)",
            "results = self.session.predict(items, batch_size=self.batch_size)[::-1]")],
          ["tests/test_infer.py::test_local_engine_streams_every_format"]),
    Fault("bench parity against itself",
          [('reference_key = parity_reference(record["runtime"], record["model"])', "reference_key = key")],
          ["tests/test_bench.py::test_bench_measures_every_backend_side_by_side"]),
    Fault("validate-triton takes any bytes as a plan",
          [("elif head not in PLAN_MAGIC_TAGS:", "elif False:")],
          ["tests/test_triton.py::test_each_check_catches_a_planted_fault"]),
    Fault("multi-label returns only the best label",
          [("np.flatnonzero(p >= MULTI_LABEL_THRESHOLD)", "[int(p.argmax())]")],
          ["tests/test_edge_cases.py::test_multi_label_bce_sigmoid_scores_and_every_label_above_threshold"]),
]


def copy_tree(work: Path) -> Path:
    """A copy of the package, its tests and benchmarks in ``work``; returns the copy's root."""
    root = work / "copy"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("hashee", "tests", "benchmarks"):
        shutil.copytree(ROOT / name, root / name, ignore=ignore)
    shutil.copyfile(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def plant(root: Path, fault: Fault) -> list[str]:
    """Apply the fault's edits in the copy; returns the files changed.

    The first edit set (``edits``, then each of ``alternatives``) whose texts all occur is applied.
    """
    sources = sorted((root / "hashee").rglob("*.py"))
    texts = {path: path.read_text() for path in sources}
    edits = next((e for e in [fault.edits, *fault.alternatives]
                  if all(any(old in t for t in texts.values()) for old, _ in e)), None)
    if edits is None:
        raise SystemExit(f"planted_faults: {fault.name!r}: its source text occurs nowhere in the package; update "
                         f"the fault to the current source")
    changed = []
    for old, new in edits:
        hits = [path for path in sources if old in path.read_text()]
        for path in hits:
            path.write_text(path.read_text().replace(old, new))
            changed.append(str(path.relative_to(root)))
    return changed


def run_tests(root: Path, tests: list[str], work: Path, extra: tuple[str, ...] = ()) -> tuple[int, list[str], str]:
    """pytest on ``tests`` in the copy; (return code, failed test ids, output tail)."""
    env = {**os.environ, "PYTHONPATH": str(root), "HASHEE_ELUE_DIR": str(ELUE), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-W", "ignore", *extra,
               f"--basetemp={work / 'pytest'}", *tests]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    found = re.finditer(r"^(FAILED|ERROR) (.+?)(?: - .*)?$", done.stdout, re.MULTILINE)
    failed = sorted({m.group(2) for m in found})
    return done.returncode, failed, (done.stdout + done.stderr)[-3000:]


def check_copy_imports(root: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", "import hashee; print(hashee.__file__)"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    if not done.stdout.strip().startswith(str(root)):
        raise SystemExit(f"planted_faults: the copy is not what Python imports ({done.stdout.strip()})")


def short(test: str) -> str:
    return test.replace("tests/", "").replace(".py::", "::")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only the faults whose name contains one of these words")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the run on an unmodified copy (when the full suite just passed)")
    parser.add_argument("--maxfail", type=int, default=4, help="stop a fault's tests after this many failures")
    args = parser.parse_args()
    faults = [f for f in FAULTS if not args.only or any(w.lower() in f.name.lower() for w in args.only)]
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="hashee-faults-") as tmp:
        if not args.no_baseline:
            work = Path(tmp) / "baseline"
            root = copy_tree(work)
            check_copy_imports(root)
            selection = sorted({t for f in faults for t in f.tests})
            code, failed, tail = run_tests(root, selection, work)
            if code != 0:
                print(tail)
                print(f"planted_faults: the unmodified copy fails {failed or 'its tests'}: fix that first")
                return 1
            print(f"baseline: {len(selection)} test selections pass on an unmodified copy", flush=True)
        rows = []
        for number, fault in enumerate(faults, 1):
            work = Path(tmp) / f"fault{number}"
            root = copy_tree(work)
            files = plant(root, fault)
            code, failed, tail = run_tests(root, fault.tests, work, (f"--maxfail={args.maxfail}",))
            fault.caught_by = failed
            caught = code != 0 and bool(failed)
            rows.append((fault, files, caught))
            print(f"[{number}/{len(faults)}] {fault.name}: {'caught' if caught else 'NOT CAUGHT'} "
                  f"({len(failed)} failing)", flush=True)
            if not caught and code != 0:
                print(tail)
            shutil.rmtree(work, ignore_errors=True)
    print()
    print("| # | planted fault | file | caught | failing tests (count: first ones) |")
    print("| --- | --- | --- | --- | --- |")
    for number, (fault, files, caught) in enumerate(rows, 1):
        shown = ", ".join(short(t) for t in fault.caught_by[:4]) + (" ..." if len(fault.caught_by) > 4 else "")
        note = f" ({fault.note})" if fault.note else ""
        print(f"| {number} | {fault.name}{note} | {', '.join(sorted(set(files)))} | {'yes' if caught else 'NO'} | "
              f"{len(fault.caught_by)}: {shown} |")
    print(f"\n({time.time() - started:.0f} s)")
    total, caught = len(rows), sum(1 for _, _, c in rows if c)
    print(f"planted faults: {total}, caught: {caught}")
    return 0 if caught == total else 1


if __name__ == "__main__":
    sys.exit(main())
