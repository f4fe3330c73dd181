"""The ``hashee`` command line: ``hash | train | eval | export | validate | predict | convert |
calibrate | quantize | build-engine | export-triton | validate-triton | infer | bench | demo``.

Only the standard library is imported at module level, so ``hashee --help`` answers without torch;
each subcommand imports what it needs when it runs.  A user error (:class:`hashee.errors.HasheeError`)
ends the command with status 1 and a one-line message; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any, Callable, Sequence

from hashee import __version__
from hashee.errors import HasheeError
from hashee.extras import require_command

HASH_KINDS = ("random", "random-incons", "frequency", "mi", "cluster")
TRAIN_HASH_KINDS = (*HASH_KINDS, "importance")  # importance: measured on a fine-tuned dense run


def _add_columns(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data columns (detected from the header when not given)")
    group.add_argument("--text-column", help="column of the (first) text: a header name or a 0-based index")
    group.add_argument("--pair-column", help="column of the second text, for sentence-pair tasks")
    group.add_argument("--label-column", help="column of the label (class name/id, or a float for regression)")


def _subcommand(sub: Any, name: str, handler: Callable[[argparse.Namespace], int], help: str,
                description: str | None = None) -> argparse.ArgumentParser:
    """Add subcommand ``name`` (``help``: its line in ``hashee --help``), which ``main`` runs with ``handler``."""
    p = sub.add_parser(name, help=help, description=description)
    p.set_defaults(handler=handler)
    return p


def _add_bundle(p: argparse.ArgumentParser, help: str = "bundle folder written by `hashee export`") -> None:
    p.add_argument("bundle", help=help)


def _add_quiet(p: argparse.ArgumentParser, display: str) -> None:
    """``--quiet``: no progress ``display`` (bars, lines, ...: what the subcommand shows while it works)."""
    p.add_argument("--quiet", action="store_true", help=f"no progress {display}")


def _column(value: str | None) -> str | int | None:
    return int(value) if value is not None and value.isdigit() else value


def _unseen(value: str) -> str | int:
    return int(value) if value.isdigit() else value


def cmd_hash(args: argparse.Namespace) -> int:
    from hashee.calibration.commands import run_hash_command

    print(run_hash_command(
        tokenizer_path=args.tokenizer, data=args.data, kind=args.kind, num_layers=args.layers,
        num_buckets=args.buckets, output_dir=args.output, target_speedup=args.target_speedup,
        seed=args.seed, unseen=_unseen(args.unseen), model_path=args.model, max_length=args.max_length,
        text_column=_column(args.text_column), pair_column=_column(args.pair_column),
        label_column=_column(args.label_column),
    ))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from hashee.training import format_train_report, train

    if args.train is None:
        from hashee.samples import SST2_DEV, SST2_TRAIN

        args.train = str(SST2_TRAIN)
        args.dev = args.dev or str(SST2_DEV)
        print(f"no --train given: using the bundled SST-2 sample ({SST2_TRAIN.parent})")
    result = train(
        args.backbone, train_file=args.train, dev_file=args.dev, output_dir=args.output, hash_kind=args.hash,
        num_layers=args.layers, num_buckets=args.buckets, dense=args.dense, learning_rate=args.lr,
        batch_size=args.batch_size, epochs=args.epochs, warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay, max_length=args.max_length, seed=args.seed, max_steps=args.max_steps,
        text_column=_column(args.text_column), pair_column=_column(args.pair_column),
        label_column=_column(args.label_column), progress=not args.quiet, exit_table=args.exit_table,
        target_speedup=args.target_speedup, teacher=args.teacher, distill_alpha=args.distill_alpha,
        distill_temperature=args.distill_temperature, distill_hidden=args.distill_hidden,
        min_exit_layer=args.min_exit_layer,
        bucket_scheme=args.bucket_scheme, importance_model=args.importance_model,
        importance_order=args.importance_order, pooling=args.pooling, adapt_steps=args.adapt_steps,
        adapt_learning_rate=args.adapt_lr, curriculum=args.curriculum, exit_shares=args.exit_shares,
        lr_scheduler=args.lr_scheduler, state_target=args.state_target,
    )
    print(format_train_report(result))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from hashee.evaluation import evaluate, format_eval_report

    result = evaluate(args.run_dir, args.data, batch_size=args.batch_size, max_length=args.max_length,
                      text_column=_column(args.text_column), pair_column=_column(args.pair_column),
                      label_column=_column(args.label_column), progress=not args.quiet,
                      exit_table=args.exit_table)
    print(format_eval_report(result))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hashee.exporter import export

    result = export(args.run_dir, args.output, target=args.target, opset=args.opset, max_length=args.max_length,
                    token_outputs=args.token_outputs, dense=args.dense, overwrite=args.overwrite,
                    progress=not args.quiet, precision=args.precision,
                    reference=args.with_reference,
                    embed_exit_table=args.embed_exit_table, layout=args.layout)
    print(result.format())
    fp16 = result.meta.get("precisions", {}).get("fp16")
    if fp16:
        print(_precision_line(fp16))
    return 0


def _precision_line(entry: dict) -> str:
    check = entry["validation"]
    agreement = "" if check["label_agreement"] is None else f", label agreement {100 * check['label_agreement']:.1f} %"
    return (f"{entry['file']}: max |difference| vs fp32 {check['max_abs_diff']:.3g}{agreement} "
            f"({check['reference']})")


def cmd_convert(args: argparse.Namespace) -> int:
    from hashee.calibration.fp16 import add_fp16

    meta = add_fp16(args.bundle)
    print(f"bundle: {args.bundle}")
    print(_precision_line(meta["precisions"]["fp16"]))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from hashee.calibration.int8 import calibrate_bundle

    result = calibrate_bundle(args.bundle, args.data, method=args.method, samples=args.samples,
                              eval_samples=args.eval_samples, recalibrate=args.recalibrate, progress=not args.quiet,
                              eval_data=args.eval_data)
    print(result.format())
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from hashee.calibration.dynamic_int8 import quantize_bundle

    result = quantize_bundle(args.bundle, data=args.data, samples=args.samples, per_channel=not args.per_tensor,
                             fuse=args.fuse, min_agreement=args.min_agreement,
                             quantize_head=args.quantize_head, progress=not args.quiet)
    print(result.format())
    return 0


def cmd_build_engine(args: argparse.Namespace) -> int:
    from hashee.exporter.tensorrt_engine import build_engine

    result = build_engine(args.bundle, precision=args.precision, profiles=args.profile,
                          timing_cache=args.timing_cache, workspace_mb=args.workspace, progress=not args.quiet)
    print(result.format())
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from hashee.exporter import validate_bundle

    result = validate_bundle(args.bundle, args.data, reference=args.reference, batch_size=args.batch_size,
                             max_length=args.max_length, tolerance=args.tolerance, progress=not args.quiet,
                             raise_on_failure=False)
    print(result.format())
    if not result.ok:
        print(f"hashee validate: error: max |difference| {result.max_abs_diff:.3g} exceeds {result.tolerance:g}",
              file=sys.stderr)
        return 1
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from hashee.runtime.command import run_predict

    return run_predict(args.bundle, args.texts, input_file=args.input, output_file=args.output, backend=args.backend,
                       device=args.device, threads=args.threads, batch_size=args.batch_size,
                       chunk_size=args.chunk_size, text_column=_column(args.text_column),
                       pair_column=_column(args.pair_column), progress=not args.quiet, precision=args.precision)


def cmd_export_triton(args: argparse.Namespace) -> int:
    from hashee.serve.triton import export_triton

    result = export_triton(args.bundle, args.repo_dir, backend=args.backend, max_batch_size=args.max_batch_size,
                           buckets=args.buckets, fp16=args.fp16, tokenizer_instances=args.tokenizer_instances,
                           name=args.name, overwrite=args.overwrite, engine_cache=args.engine_cache,
                           python_env=args.python_env)
    print(result.format())
    return 0


def cmd_validate_triton(args: argparse.Namespace) -> int:
    from hashee.serve.triton import validate_triton

    warnings: list[str] = []
    problems = validate_triton(args.repo_dir, allow_unbuilt_plans=args.allow_unbuilt_plans, warnings=warnings)
    for warning in warnings:
        print(f"hashee validate-triton: warning: {warning}", file=sys.stderr)
    if problems:
        print(f"hashee validate-triton: {args.repo_dir}: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"{args.repo_dir}: every config.pbtxt parses as Triton's ModelConfig and passes the checks"
          + (f" ({len(warnings)} warning(s) above)" if warnings else ""))
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from hashee.serve.infer import run_infer

    result = run_infer(args.bundle, args.input, args.output, engine=args.engine, fmt=args.format,
                       text_column=args.text_column, pair_column=args.pair_column, id_column=args.id_column,
                       batch_size=args.batch_size, actors=args.actors, gpus_per_actor=args.gpus_per_actor,
                       address=args.address, backend=args.backend, progress=not args.quiet)
    print(result.format())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from hashee.bench.driver import parse_list, run_bench

    result = run_bench(args.bundle, args.data, args.output, backends=parse_list(args.backends, str, "--backends"),
                       batch_sizes=parse_list(args.batch_sizes, int, "--batch-sizes"), dense=args.dense,
                       precisions=parse_list(args.precisions, str, "--precisions"),
                       repeats=args.repeats, warmup=args.warmup, threads=args.threads, device=args.device,
                       limit=args.limit, optimize_dense_graph=not args.no_dense_optimization,
                       max_batches=args.max_batches, compare=args.compare or (),
                       progress=not args.quiet, command="hashee " + " ".join(shlex.quote(a) for a in args.argv))
    with open(os.path.join(args.output, "results.md"), encoding="utf-8") as handle:
        print(handle.read().rstrip())
    print(f"\nresults: {os.path.join(args.output, 'results.json')}\nplot: {result['plot']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hashee.bench.demo import run_demo

    return run_demo(args.output, quick=args.quick, epochs=args.epochs, max_steps=args.max_steps,
                    progress=not args.quiet)


def add_hash(sub: Any) -> None:
    """The ``hashee hash`` subcommand."""
    p = _subcommand(sub, "hash", cmd_hash, help="build an exit table (token id -> exit layer) from a tokenizer and data",
                    description="Build an exit table for every id of a tokenizer's vocabulary.")
    p.add_argument("--tokenizer", required=True, help="Hugging Face tokenizer or model folder")
    p.add_argument("--data", help="data file (.tsv/.csv/.jsonl) for the frequency and mi kinds and for "
                                  "--target-speedup; also used to report the FLOPs reduction")
    p.add_argument("--kind", choices=HASH_KINDS, default="frequency")
    p.add_argument("--layers", type=int, required=True, help="L, the encoder depth")
    p.add_argument("--buckets", type=int, required=True, help="B, number of exit buckets (B <= L)")
    p.add_argument("--target-speedup", type=float, help="calibrate frequency buckets to this FLOPs reduction (within 5%%)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unseen", default="last", help="exit layer of ids not in the data: last, first or a number")
    p.add_argument("--model", help="model folder whose input embeddings the cluster kind uses (default: --tokenizer)")
    p.add_argument("--max-length", type=int, default=128, help="truncation when measuring FLOPs")
    p.add_argument("-o", "--output", required=True, help="folder to write exit_table.npy and exit_table.json")
    _add_columns(p)


def add_train(sub: Any) -> None:
    """The ``hashee train`` subcommand."""
    p = _subcommand(sub, "train", cmd_train, help="fine-tune a HashEE (or dense) classifier with the Hugging Face Trainer",
                    description="Fine-tune with the seed's recipe (Table 8) and write a run directory.")
    p.add_argument("--backbone", help="Hugging Face model folder (default: the offline all-MiniLM-L6-v2)")
    p.add_argument("--train", help="training data (.tsv/.csv/.jsonl); default: the bundled SST-2 sample "
                                   "(2,000 sentences, with its 400-sentence dev sample as --dev)")
    p.add_argument("--dev", help="development data, evaluated after each epoch and at the end")
    p.add_argument("--hash", choices=TRAIN_HASH_KINDS, default="frequency",
                   help="exit-table kind (importance: ranked by a fine-tuned dense run's attention from [CLS], "
                        "with --importance-model and --target-speedup)")
    _add_table_levers(p)
    _add_exit_shares(p)
    _add_pooling(p)
    _add_adaptation(p)
    p.add_argument("--layers", type=int, help="K: train the backbone's first K layers (default: all of them); "
                                              "with --dense a static-depth model, FLOPs against the full depth")
    p.add_argument("--buckets", type=int, help="B (default: the number of layers)")
    p.add_argument("--dense", action="store_true", help="train the same backbone without early exit")
    p.add_argument("--exit-table", help="use this exit table (a folder written by `hashee hash`) instead of --hash")
    p.add_argument("--target-speedup", type=float,
                   help="frequency hash with buckets calibrated to this FLOPs reduction on the training data")
    p.add_argument("--importance-model", help="--hash importance: the fine-tuned dense run that ranks the vocabulary")
    p.add_argument("--teacher", help="a run directory (e.g. a --dense run on the same task) to distil from")
    _add_recipe(p)
    _add_schedule(p)
    p.add_argument("--seed", type=int, default=42)
    _add_quiet(p, "bars")
    p.add_argument("-o", "--output", required=True, help="run directory to write")
    _add_columns(p)


def add_eval(sub: Any) -> None:
    """The ``hashee eval`` subcommand."""
    p = _subcommand(sub, "eval", cmd_eval, help="score a run directory on a data file, with its FLOPs reduction",
                    description="Evaluate a HashEE or dense run: task metric and measured FLOPs reduction.")
    p.add_argument("run_dir", help="run directory written by `hashee train` (or any save_pretrained folder)")
    p.add_argument("--data", required=True, help="labelled data file (.tsv/.csv/.jsonl)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, help="default: the training run's")
    p.add_argument("--exit-table", help="evaluate a HashEE run with another exit table (a folder written by "
                                        "`hashee hash`), e.g. random-incons for the consistency ablation")
    _add_quiet(p, "bar")
    _add_columns(p)


def add_export(sub: Any) -> None:
    """The ``hashee export`` subcommand."""
    p = _subcommand(sub, "export", cmd_export,
                    help="export a run to a validated ONNX bundle (model.onnx, exit table, tokenizer)",
                    description="Export a HashEE run (or, with --dense, its weights without early exit) to a "
                                "bundle folder; the saved graph is checked against PyTorch and nothing is "
                                "written when it disagrees.")
    p.add_argument("run_dir", help="folder written by `hashee train` or save_pretrained (model + tokenizer)")
    p.add_argument("-o", "--output", required=True, help="bundle folder to write")
    p.add_argument("--target", default="onnxruntime", help="onnxruntime (default) or tensorrt")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--layout", choices=("packed", "prefix"), default="packed",
                   help="packed (default: active tokens gathered across the batch) or prefix (the host sorts tokens "
                        "by exit layer; per-layer masks exit_mask_1..L whose shapes carry the active widths, so "
                        "every shape follows from input shapes: TensorRT profiles, CUDA graphs)")
    p.add_argument("--max-length", type=int, help="longest input the bundle accepts (default: the model's limit)")
    p.add_argument("--token-outputs", action="store_true", help="also output each token's state at its exit layer")
    p.add_argument("--dense", action="store_true", help="export the same weights without early exit (Optimum)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--with-reference", action="store_true",
                   help="also store the PyTorch weights (reference/, safetensors) for the runtime's torch backend")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="fp16 also writes model.fp16.onnx (mixed precision, checked against fp32 on ONNX Runtime)")
    p.add_argument("--embed-exit-table", action="store_true",
                   help="put the exit table in the graph (masks computed from input_ids): only batch-first inputs, "
                        "as Triton's dynamic batching needs")
    _add_quiet(p, "lines")


def add_convert(sub: Any) -> None:
    """The ``hashee convert`` subcommand."""
    p = _subcommand(sub, "convert", cmd_convert, help="add a mixed-precision fp16 copy (model.fp16.onnx) to a bundle",
                    description="Convert a bundle's fp32 model.onnx to fp16 (LayerNorm, Softmax, reductions, "
                                "exit-mask/index logic and IO stay fp32), check it against fp32 on ONNX "
                                "Runtime CPU (exit 1 when they disagree) and record it in hashee.json.")
    _add_bundle(p)
    p.add_argument("--precision", choices=("fp16",), default="fp16")


def add_calibrate(sub: Any) -> None:
    """The ``hashee calibrate`` subcommand."""
    p = _subcommand(sub, "calibrate", cmd_calibrate,
                    help="calibrate INT8 (Q/DQ) on real sentences: model.int8.onnx in the bundle",
                    description="Quantise the bundle's MatMul weights per channel and their inputs per tensor "
                                "(symmetric int8, explicit QuantizeLinear/DequantizeLinear as TensorRT "
                                "expects) with ranges calibrated on real sentences and their exit masks; "
                                "the ranges are saved in the bundle so a rebuild does not recalibrate.")
    _add_bundle(p)
    p.add_argument("--data", required=True, help="calibration sentences (.tsv/.csv/.jsonl)")
    p.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax")
    p.add_argument("--samples", type=int, default=256, help="calibration sentences to use (default 256)")
    p.add_argument("--eval-samples", type=int, default=0,
                   help="also compare INT8 with fp32 (accuracy, agreement, ORT CPU samples/s at batch 32) on this "
                        "many labelled sentences of --eval-data (0: skip)")
    p.add_argument("--eval-data", help="labelled data for --eval-samples (default: --data)")
    p.add_argument("--recalibrate", action="store_true", help="ignore the ranges saved in the bundle")
    _add_quiet(p, "lines")


def add_quantize(sub: Any) -> None:
    """The ``hashee quantize`` subcommand."""
    p = _subcommand(sub, "quantize", cmd_quantize,
                    help="add dynamic INT8 for ONNX Runtime CPU (model.int8-dynamic.onnx) to a bundle",
                    description="Quantise a bundle's weight MatMuls to int8 with ONNX Runtime's dynamic quantisation "
                                "(activations quantised at run time; the exit-mask/index path untouched), from a "
                                "copy with the hashee functions inlined and shapes inferred; check it against fp32 "
                                "through the runtime Session on real sentences and edge inputs; refuse (exit 1, "
                                "nothing written) below 99.5 % label agreement. Runs with --precision int8 on "
                                "ONNX Runtime. Dense, HashEE and embedded-table bundles.")
    _add_bundle(p, "bundle folder written by `hashee export` (also --dense or --embed-exit-table)")
    p.add_argument("--data", help="real sentences for the check (.tsv/.csv/.jsonl; default: the bundled SST-2 dev sample)")
    p.add_argument("--samples", type=int, default=400, help="check sentences to use (default 400)")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per matrix instead of per output channel")
    p.add_argument("--quantize-head", action="store_true",
                   help="also quantise the pooler and classifier (default: they stay fp32; one row per sequence)")
    p.add_argument("--min-agreement", type=float, default=0.995,
                   help="refuse below this share of fp32 labels on the check sentences (default 0.995)")
    fuse = p.add_mutually_exclusive_group()
    fuse.add_argument("--fuse", dest="fuse", action="store_true", default=None,
                      help="run ONNX Runtime's transformer optimizer first (default for dense bundles)")
    fuse.add_argument("--no-fuse", dest="fuse", action="store_false", help="quantise the graph as exported")
    _add_quiet(p, "lines")


def add_build_engine(sub: Any) -> None:
    """The ``hashee build-engine`` subcommand."""
    p = _subcommand(sub, "build-engine", cmd_build_engine,
                    help="build a TensorRT engine from a tensorrt-target bundle (needs a GPU)",
                    description="Parse the bundle's tensorrt-target ONNX (fp32, fp16 or int8 Q/DQ) with the "
                                "TensorRT 11 Python API and write a serialized plan to BUNDLE/engines/.")
    _add_bundle(p, "bundle folder written by `hashee export --target tensorrt`")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    p.add_argument("--profile", action="append",
                   help="optimisation profile BATCHxSEQ:BATCHxSEQ:BATCHxSEQ (min:opt:max), e.g. 1x8:32x64:128x128; "
                        "repeat for several (default: 1x2:32xL/2:128xL, L the bundle's max length)")
    p.add_argument("--timing-cache", help="timing cache file to read and update (reused across builds)")
    p.add_argument("--workspace", type=int, default=4096, help="builder workspace limit in MiB (default 4096)")
    _add_quiet(p, "lines")


def add_validate(sub: Any) -> None:
    """The ``hashee validate`` subcommand."""
    p = _subcommand(sub, "validate", cmd_validate, help="compare a bundle with its PyTorch reference over a data file",
                    description="Run a bundle on ONNX Runtime CPU and the PyTorch model over a data file; "
                                "report max |difference| and label agreement (exit 1 above the tolerance).")
    _add_bundle(p)
    p.add_argument("--data", required=True, help="data file (.tsv/.csv/.jsonl)")
    p.add_argument("--reference", help="run folder of the PyTorch reference (default: the one the bundle names)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, help="default: the bundle's")
    p.add_argument("--tolerance", type=float, default=1e-4)
    _add_quiet(p, "bar")


def add_predict(sub: Any) -> None:
    """The ``hashee predict`` subcommand."""
    p = _subcommand(sub, "predict", cmd_predict, help="classify texts with a bundle (labels and scores)",
                    description="Load a bundle with the runtime Session and classify texts given on the command "
                                "line, or stream a file (--input) to JSON lines (--output) in bounded memory.")
    _add_bundle(p)
    p.add_argument("texts", nargs="*", help="texts to classify; each prints label<TAB>score<TAB>text")
    p.add_argument("--input", help="file of texts: .txt (one per line), .tsv/.csv (header names the columns) or "
                                   ".jsonl; - reads lines from standard input")
    p.add_argument("--output", help="JSON lines file to write, one result per input in order (default: stdout)")
    p.add_argument("--backend", default="auto", help="auto (default), onnxruntime, tensorrt or torch")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                   help="TensorRT: the engine of this precision (default: fp32, else fp16, else int8); ONNX Runtime: "
                        "int8 runs the dynamic int8 model of `hashee quantize` on the CPU")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the best available)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: the library's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunk-size", type=int, default=4096, help="records read, predicted and written at a time")
    p.add_argument("--text-column", help="column or JSON field of the (first) text")
    p.add_argument("--pair-column", help="column or JSON field of the second text, for sentence pairs")
    _add_quiet(p, "bar")


def add_export_triton(sub: Any) -> None:
    """The ``hashee export-triton`` subcommand."""
    p = _subcommand(sub, "export-triton", cmd_export_triton,
                    help="write a Triton Inference Server model repository for a bundle",
                    description="Write a Triton model repository (Python-backend tokenizer padding to buckets, "
                                "the HashEE model with the exit table embedded and dynamic batching, an ensemble "
                                "chaining them) and check it against Triton's ModelConfig schema.")
    _add_bundle(p)
    p.add_argument("repo_dir", help="model repository folder to write")
    p.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "tensorrt", "tensorrt-plan"),
                   help="onnxruntime (default), tensorrt (ONNX Runtime's TensorRT accelerator, int32 inputs) or "
                        "tensorrt-plan (a tensorrt_plan model plus build_plans.py to run on the serving GPU)")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--buckets", default="32,64,128", help="widths the tokenizer pads to (default 32,64,128)")
    p.add_argument("--fp16", action="store_true", help="TensorRT precision FP16 (with --backend tensorrt)")
    p.add_argument("--tokenizer-instances", type=int, default=1, help="Python-backend tokenizer instances")
    p.add_argument("--name", default="hashee", help="ensemble name; the parts are NAME_tokenizer and NAME_model")
    p.add_argument("--engine-cache", default="/tmp/hashee_trt_cache", help="TensorRT engine cache on the server")
    p.add_argument("--python-env", help="EXECUTION_ENV_PATH of the tokenizer: absolute path (on the server) of a "
                                        "venv/conda environment with numpy and tokenizers for the Python backend")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty repository folder")


def add_validate_triton(sub: Any) -> None:
    """The ``hashee validate-triton`` subcommand."""
    p = _subcommand(sub, "validate-triton", cmd_validate_triton,
                    help="check a Triton model repository (exit 1 listing every problem)",
                    description="Parse every config.pbtxt as Triton's ModelConfig and run the semantic checks: "
                                "names, version folders, ensemble chaining, batch-first inputs, ONNX names, "
                                "dtypes and shapes.")
    p.add_argument("repo_dir", help="Triton model repository folder")
    p.add_argument("--allow-unbuilt-plans", action="store_true",
                   help="a tensorrt_plan model whose build_plans.py has not run yet is a warning, not a problem")


def add_infer(sub: Any) -> None:
    """The ``hashee infer`` subcommand."""
    p = _subcommand(sub, "infer", cmd_infer, help="classify a JSONL/CSV/TSV/Parquet file, in-process or on a Ray cluster",
                    description="Batch inference over a file: --engine local streams it through the in-process "
                                "runtime; --engine ray reads, predicts (an actor pool, one Session per actor) and "
                                "writes with Ray Data. Results carry the id column to match them to inputs.")
    _add_bundle(p)
    p.add_argument("input", help="input file (or, for ray, a folder of files) in jsonl, csv, tsv or parquet")
    p.add_argument("output", help="output: a file for local, a folder of part files for ray")
    p.add_argument("--engine", default="local", choices=("local", "ray"))
    p.add_argument("--format", choices=("jsonl", "csv", "tsv", "parquet"), help="input format (default: from the extension)")
    p.add_argument("--text-column", help="column of the (first) text (default: sentence, text, ...)")
    p.add_argument("--pair-column", help="column of the second text, for sentence pairs")
    p.add_argument("--id-column", help="column that identifies rows (default: id; local numbers rows when absent)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per model call batch (Ray: per map_batches batch)")
    p.add_argument("--actors", type=int, default=1, help="Ray actors, each holding one Session")
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    p.add_argument("--address", help="Ray cluster address (default: start a local one)")
    p.add_argument("--backend", default="auto", help="runtime backend: auto, onnxruntime, tensorrt or torch")
    _add_quiet(p, "output")


def add_bench(sub: Any) -> None:
    """The ``hashee bench`` subcommand."""
    p = _subcommand(sub, "bench", cmd_bench, help="benchmark a HashEE bundle against dense: PyTorch, ONNX Runtime, TensorRT",
                    description="Throughput (median samples/s), p50/p99 latency per batch, peak RSS, FLOPs "
                                "speed-up (ideal vs realised), task metric and parity with PyTorch, for dense and "
                                "HashEE on every backend, side by side. Writes results.json, results.md and "
                                "throughput.png to -o.")
    _add_bundle(p, "HashEE bundle folder written by `hashee export`")
    p.add_argument("--data", required=True, help="data file (.tsv/.csv/.jsonl) or a named configuration: sst2-dev, "
                                                 "snli-dev (pairs), long (256-512 tokens)")
    p.add_argument("--backends", default="torch,onnxruntime,tensorrt",
                   help="comma-separated: torch, onnxruntime, tensorrt (one that cannot run is reported as skipped)")
    p.add_argument("--batch-sizes", default="1,8,32,128", help="comma-separated batch sizes (default 1,8,32,128)")
    p.add_argument("--precisions", default="fp32",
                   help="comma-separated: fp32, int8 (ONNX Runtime: the dynamic int8 model of `hashee quantize`, "
                        "dense and HashEE; TensorRT: the int8 engine; PyTorch: fp32 only). Default fp32")
    p.add_argument("--dense", help="dense baseline: a dense bundle (hashee export --dense) or a run folder (exported "
                                   "with Optimum here); default: the HashEE model's own weights without early exit")
    p.add_argument("--compare", action="append", metavar="BUNDLE",
                   help="another HashEE bundle of the same model, e.g. exported with --layout prefix, measured beside "
                        "the first on ONNX Runtime and TensorRT (repeatable)")
    p.add_argument("--repeats", type=int, default=5, help="timed passes per backend and batch size (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up passes before timing (default 1)")
    p.add_argument("--limit", type=int, help="use only the first N examples")
    p.add_argument("--max-batches", type=int, help="time at most N batches per pass, evenly spread over the "
                                                   "length-sorted batches (accuracy still covers every example)")
    p.add_argument("--threads", type=int, help="intra-op threads for every backend (default: the libraries')")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the best available)")
    p.add_argument("--no-dense-optimization", action="store_true",
                   help="measure the plain Optimum export instead of the ONNX Runtime-optimised (fused) dense graph")
    _add_quiet(p, "display")
    p.add_argument("-o", "--output", required=True, help="folder for results.json, results.md and throughput.png")


def add_demo(sub: Any) -> None:
    """The ``hashee demo`` subcommand."""
    p = _subcommand(sub, "demo", cmd_demo,
                    help="the whole pipeline on the bundled SST-2 sample: train, export, validate, bench",
                    description="Fine-tune MiniLM (frequency hash) on the bundled SST-2 sample, export HashEE and "
                                "dense bundles, validate, benchmark against dense and print the table.")
    p.add_argument("-o", "--output", default="runs/demo", help="folder for the run, bundles and results "
                                                               "(default runs/demo)")
    p.add_argument("--quick", action="store_true", help="reduced mode: a few training steps, small batches")
    p.add_argument("--epochs", type=float, help="training epochs (default 2; --quick: a few steps)")
    p.add_argument("--max-steps", type=int, help="stop training after this many optimiser steps")
    _add_quiet(p, "display")


def _add_recipe(p: argparse.ArgumentParser) -> None:
    """The seed recipe's options (Table 8) and the distillation weights, shared by train and frontier."""
    p.add_argument("--distill-alpha", type=float, default=0.5,
                   help="weight of the teacher's soft targets against the labels (default 0.5)")
    p.add_argument("--distill-temperature", type=float, default=2.0, help="softmax temperature (default 2)")
    p.add_argument("--distill-hidden", type=float, default=0.0,
                   help="weight of a hidden-state term: final token states against the teacher's (default 0)")
    # checked by train() (a wrong name is a one-line error, exit 1), not by argparse choices
    p.add_argument("--state-target", default="last",
                   help="what --adapt-steps and --distill-hidden match a token's final state to: the dense model's "
                        "last hidden state (last, default) or its state after the token's own exit layer (exit)")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-steps", type=int, help="stop (each run) after this many optimiser steps")


LR_SCHEDULERS_HELP = "linear, cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup, inverse_sqrt"


def _add_schedule(p: argparse.ArgumentParser) -> None:
    # checked by train() (a wrong name is a one-line error, exit 1), not by argparse choices
    p.add_argument("--lr-scheduler", default="linear",
                   help=f"learning-rate schedule after the warm-up (Hugging Face lr_scheduler_type): "
                        f"{LR_SCHEDULERS_HELP} (default linear, the seed's)")


def _add_adaptation(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapt-steps", type=int, default=0,
                   help="exit-aware adaptation before fine-tuning: steps teaching the HashEE (or cut) model to "
                        "reproduce the full-depth backbone's hidden states on the training texts (default 0: off)")
    p.add_argument("--adapt-lr", type=float, default=1e-4, help="learning rate of the adaptation (default 1e-4)")


def _add_pooling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pooling", choices=("cls", "mean"), default="cls",
                   help="what the head reads: the [CLS] state (default) or the mean of the tokens' exit states")


def _add_table_levers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-exit-layer", type=int, default=1,
                   help="earliest exit layer (default 1; 2 keeps every token for two layers)")
    p.add_argument("--bucket-scheme", choices=("types", "mass"), default="types",
                   help="with --target-speedup: bucket boundaries as fractions of token types (the seed) or of "
                        "token occurrences")
    p.add_argument("--importance-order", choices=("low-first", "high-first"), default="low-first",
                   help="--hash importance: unimportant tokens exit first (default) or important ones")
    p.add_argument("--curriculum", type=float, default=0.0,
                   help="share of the steps over which tokens move from the last layer to their exits (default 0)")


def _add_exit_shares(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exit-shares", metavar="S1,...,SL",
                   help="with --target-speedup: budgets per layer, the relative token mass leaving at layers 1..L "
                        "(e.g. 4,3,2,1; 0 below --min-exit-layer), mixed with the all-last-layer table (slower) or "
                        "the all-at-the-lowest-layer table (faster) to meet the target")


def _numbers(kind: type, what: str) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            example = "2,3,4" if kind is int else "1.5,2,2.5"
            raise argparse.ArgumentTypeError(f"{what} must be a comma-separated list, e.g. {example}; "
                                             f"got {text!r}") from None
    return parse


def add_frontier_parser(sub: argparse._SubParsersAction) -> None:
    """``hashee frontier``: dense, static-depth and HashEE runs over seeds, resumable, with reports."""
    p = _subcommand(sub, "frontier", cmd_frontier,
                    help="accuracy against FLOPs: dense, static-depth and HashEE runs over seeds",
                    description="Train the full-depth dense model, its first-K-layer (static-depth) models and "
                                "HashEE at calibrated FLOPs reductions, each over several seeds, with one recipe; "
                                "finished runs are skipped, so an interrupted frontier resumes. Writes "
                                "frontier.json, frontier.md and frontier.png into the output folder.")
    p.add_argument("--train", help="training data (.tsv/.csv/.jsonl; required unless --report-only)")
    p.add_argument("--dev", help="development data the points are scored on (required unless --report-only)")
    p.add_argument("--backbone", help="Hugging Face model folder (default: the offline all-MiniLM-L6-v2)")
    p.add_argument("--depths", type=_numbers(int, "--depths"), default=[2, 3, 4],
                   help="static depths K (the backbone's first K layers; default 2,3,4)")
    p.add_argument("--speedups", type=_numbers(float, "--speedups"), default=[1.5, 2.0, 2.5, 3.0],
                   help="HashEE FLOPs reductions to calibrate frequency tables to (default 1.5,2,2.5,3)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per point (default 3: --seed, --seed+1, ...)")
    p.add_argument("--seed", type=int, default=42, help="first seed (default 42)")
    p.add_argument("--no-dense", action="store_true", help="skip the full-depth dense point")
    p.add_argument("--report-only", action="store_true", help="rewrite the reports from finished runs; train nothing")
    p.add_argument("--report-to", metavar="OUTDIR",
                   help="with --report-only: write portable reports into OUTDIR (the frontier folder's path becomes "
                        "FRONTIER, the default backbone's its package name; see --path-alias)")
    p.add_argument("--path-alias", action="append", default=[], metavar="/ABS/PREFIX=NAME",
                   help="with --report-only: write paths under /ABS/PREFIX as NAME/... in the reports (repeatable; "
                        "e.g. /work/shared/data/elue=../shared/data/elue)")
    recipe = p.add_argument_group("recipe (defaults: the seed recipe; what differs names the points)")
    recipe.add_argument("--teacher", help="'dense' (each seed's own dense run) or a run directory to distil from")
    _add_recipe(recipe)
    recipe.add_argument("--hash", choices=("frequency", "importance"), default="frequency",
                        help="HashEE points' table: frequency, or importance measured on each seed's dense run")
    _add_table_levers(recipe)
    _add_exit_shares(recipe)
    _add_pooling(recipe)
    _add_adaptation(recipe)
    _add_schedule(recipe)
    recipe.add_argument("--init", help="'dense' (start static and HashEE runs from each seed's fine-tuned dense run) "
                                       "or a model folder")
    _add_quiet(p, "bars")
    p.add_argument("--from-report", metavar="FRONTIER_JSON", action="append",
                   help="with --report-only and --report-to: write frontier.md and frontier.png from a frontier.json "
                        "(e.g. the curated benchmarks/frontier.json) instead of from a frontier folder's runs; "
                        "repeated, the reports (say, seeds trained on different machines) are merged and the merged "
                        "frontier.json is written too")
    p.add_argument("-o", "--output", help="frontier folder (runs/ and the reports; required unless --from-report)")
    _add_columns(p)


def _frontier_recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The frontier recipe of ``hashee frontier``'s options."""
    return {"learning_rate": args.lr, "batch_size": args.batch_size, "epochs": args.epochs,
            "warmup_ratio": args.warmup_ratio, "weight_decay": args.weight_decay,
            "max_length": args.max_length, "max_steps": args.max_steps, "teacher": args.teacher,
            "distill_alpha": args.distill_alpha, "distill_temperature": args.distill_temperature,
            "distill_hidden": args.distill_hidden,
            "init": args.init, "hash_kind": args.hash, "min_exit_layer": args.min_exit_layer,
            "bucket_scheme": args.bucket_scheme, "importance_order": args.importance_order,
            "pooling": args.pooling, "adapt_steps": args.adapt_steps, "adapt_learning_rate": args.adapt_lr,
            "curriculum": args.curriculum, "exit_shares": args.exit_shares, "lr_scheduler": args.lr_scheduler,
            "state_target": args.state_target}


def _path_aliases(values: Sequence[str]) -> list[tuple[str, str]]:
    from hashee.errors import TrainConfigError

    aliases = []
    for value in values:
        prefix, equals, name = value.partition("=")
        if not equals or not prefix.startswith("/") or not name:
            raise TrainConfigError(f"--path-alias takes /ABSOLUTE/PREFIX=NAME (e.g. /work/shared/data/elue="
                                   f"../shared/data/elue), got {value!r}")
        aliases.append((prefix, name))
    return aliases


def _frontier_reports(args: argparse.Namespace) -> list:
    """``--report-only``: the reports rewritten from the finished runs (portable with --report-to/--path-alias)."""
    from pathlib import Path

    from hashee.bench import frontier
    from hashee.errors import TrainConfigError

    if args.from_report:
        if args.output or args.path_alias or not args.report_to:
            raise TrainConfigError("--from-report takes --report-to OUTDIR and neither -o nor --path-alias (the "
                                   "report's paths are written as they are)")
        return frontier.write_reports_from([Path(path) for path in args.from_report], Path(args.report_to))
    if args.output is None:
        raise TrainConfigError("-o FRONTIER_FOLDER is required (or --from-report FILE with --report-only)")
    output = Path(args.output)
    if not (output / "runs").is_dir():
        raise TrainConfigError(f"{output} holds no frontier runs (no {output / 'runs'}); pass the -o of a frontier")
    portable = bool(args.report_to or args.path_alias)
    files = frontier.write_reports(output, Path(args.report_to) if args.report_to else None,
                                   _path_aliases(args.path_alias) if portable else None)
    if portable:
        left = json.loads(files[0].read_text()).get("portable_leftovers")
        if left:
            print(f"note: {len(left)} absolute path(s) left in the reports (add a --path-alias): {', '.join(left)}",
                  file=sys.stderr)
    return files


def cmd_frontier(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hashee.bench import frontier
    from hashee.errors import TrainConfigError

    if args.report_only:
        files = _frontier_reports(args)
    else:
        if args.from_report:
            raise TrainConfigError("--from-report goes with --report-only (it trains nothing)")
        if args.output is None:
            raise TrainConfigError("-o FRONTIER_FOLDER is required: the folder the runs and reports go to")
        if args.train is None or args.dev is None:
            raise TrainConfigError("--train and --dev are required (unless --report-only, which trains nothing)")
        if args.report_to or args.path_alias:
            raise TrainConfigError("--report-to and --path-alias go with --report-only")
        job = frontier.FrontierJob(
            train_file=Path(args.train), dev_file=Path(args.dev), output_dir=Path(args.output),
            backbone=Path(args.backbone) if args.backbone else None, base_seed=args.seed, progress=not args.quiet,
            columns={"text_column": _column(args.text_column), "pair_column": _column(args.pair_column),
                     "label_column": _column(args.label_column)})
        points = frontier.plan_points(frontier.backbone_depth(job.backbone), args.depths, args.speedups,
                                      _frontier_recipe(args), seeds=args.seeds, dense=not args.no_dense)
        result = frontier.run_frontier(job, points, seeds=args.seeds)
        print(f"trained {len(result.trained)} runs, {len(result.skipped)} already finished")
        files = result.files
    print(next(f for f in files if f.name == frontier.FRONTIER_MD).read_text())
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


#: one function per subcommand, in the order ``hashee --help`` lists them; a new subcommand adds its own
SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (
    add_hash,
    add_train,
    add_frontier_parser,
    add_eval,
    add_export,
    add_convert,
    add_calibrate,
    add_quantize,
    add_build_engine,
    add_validate,
    add_predict,
    add_export_triton,
    add_validate_triton,
    add_infer,
    add_bench,
    add_demo,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand (no heavy imports)."""
    parser = argparse.ArgumentParser(
        prog="hashee",
        description="Hash-based token-level early exiting (HashEE) for transformer encoders: "
                    "build exit tables, train, evaluate, export to ONNX.",
    )
    parser.add_argument("--version", action="version", version=f"hashee {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hashee`` console script; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if extra:  # predict's texts may follow its options: `hashee predict B --backend onnxruntime "text"`
        if getattr(args, "command", None) != "predict" or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.texts = [*args.texts, *extra]
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        require_command(args.command)
        return handler(args)
    except HasheeError as exc:
        print(f"hashee {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hashee {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
