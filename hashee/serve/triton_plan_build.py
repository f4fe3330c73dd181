#!/usr/bin/env python3
"""Build the TensorRT plan of a hashee Triton model on the GPU that will serve it.

Written by ``hashee export-triton --backend tensorrt-plan`` next to the model's ``config.pbtxt``.  A
TensorRT plan only runs on the GPU compute capability (and TensorRT version) it was built with, so
build it on the serving machine, with the TensorRT that its tritonserver uses:

    python3 build_plans.py            # writes 1/model.plan
    python3 build_plans.py --dry-run  # prints what it would build; needs no GPU nor TensorRT

Needs only the ``tensorrt`` Python package (the one matching the server's TensorRT) and an NVIDIA GPU;
not hashee.  The network is strongly typed (precision comes from the ONNX file) and gets one
optimisation profile per tokenizer bucket: ``[1, width]`` to ``[max_batch_size, width]``, the shapes the
tokenizer model sends; ``config.pbtxt`` lists every profile in its ``instance_group`` so Triton picks
the one that fits each batch.
"""

import argparse
import os
import sys
import time

# filled in by hashee export-triton; paths are relative to this file's folder
SPEC = {}


def check_spec(spec):
    """The profiles cover every input with rank-2 shapes, min <= opt <= max, batch <= max_batch_size."""
    problems = []
    for number, profile in enumerate(spec["profiles"]):
        if sorted(profile["shapes"]) != sorted(spec["inputs"]):
            problems.append(f"profile {number} names {sorted(profile['shapes'])}, the model takes {spec['inputs']}")
        for name, (low, opt, high) in profile["shapes"].items():
            if not (len(low) == len(opt) == len(high) == 2):
                problems.append(f"profile {number}: {name} needs [batch, sequence] shapes")
            elif not all(a <= b <= c for a, b, c in zip(low, opt, high)) or low[0] < 1:
                problems.append(f"profile {number}: {name} has min {low} / opt {opt} / max {high} out of order")
            elif high[0] > spec["max_batch_size"]:
                problems.append(f"profile {number}: {name} batch {high[0]} > max_batch_size {spec['max_batch_size']}")
    return problems


def build(spec, folder, workspace_mb, timing_cache, say):
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if spec["strongly_typed"] and strongly_typed is not None:  # TensorRT 10 needs it; 11 is always strongly typed
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    onnx_path = os.path.join(folder, spec["onnx"])
    say(f"parsing {onnx_path}")
    if not parser.parse_from_file(onnx_path):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise SystemExit(f"TensorRT's ONNX parser refused {onnx_path}: " + " | ".join(errors[:5]))
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if sorted(names) != sorted(spec["inputs"]):
        raise SystemExit(f"{onnx_path} has inputs {names}, config.pbtxt declares {spec['inputs']}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    for profile in spec["profiles"]:
        trt_profile = builder.create_optimization_profile()
        for name in names:
            low, opt, high = profile["shapes"][name]
            trt_profile.set_shape(name, tuple(low), tuple(opt), tuple(high))
        config.add_optimization_profile(trt_profile)
    blob = b""
    if timing_cache and os.path.isfile(timing_cache):
        with open(timing_cache, "rb") as handle:
            blob = handle.read()
    config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False)
    say(f"building {len(spec['profiles'])} profile(s), precision from the ONNX file ({spec['precision']}), "
        f"workspace {workspace_mb} MiB, TensorRT {trt.__version__}")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SystemExit(f"TensorRT could not build a plan from {onnx_path} (see its log above)")
    if timing_cache:
        with open(timing_cache, "wb") as handle:
            handle.write(bytes(config.get_timing_cache().serialize()))
    target = os.path.join(folder, spec["plan"])
    os.makedirs(os.path.dirname(target), exist_ok=True)
    partial = target + ".partial"
    with open(partial, "wb") as handle:
        handle.write(bytes(plan))
    os.replace(partial, target)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build the TensorRT plan of this Triton model on the serving GPU.")
    parser.add_argument("--workspace-mb", type=int, default=SPEC.get("workspace_mb", 4096),
                        help="builder workspace limit in MiB")
    parser.add_argument("--timing-cache", help="TensorRT timing cache file to read (when it exists) and write back")
    parser.add_argument("--dry-run", action="store_true", help="print the plan's inputs and profiles; build nothing")
    args = parser.parse_args(argv)
    folder = os.path.dirname(os.path.abspath(__file__))
    started = time.perf_counter()

    def say(message):
        print(f"[build_plans {time.perf_counter() - started:5.1f}s] {message}", file=sys.stderr, flush=True)

    problems = check_spec(SPEC)
    if problems:
        raise SystemExit("build_plans.py: bad SPEC:\n  - " + "\n  - ".join(problems))
    if args.dry_run:
        print(f"model {SPEC['model']}: {SPEC['onnx']} -> {SPEC['plan']} (strongly typed: {SPEC['strongly_typed']})")
        for number, profile in enumerate(SPEC["profiles"]):
            shapes = ", ".join(f"{name} {'/'.join('x'.join(map(str, s)) for s in triple)}"
                               for name, triple in profile["shapes"].items())
            print(f"profile {number} (bucket {profile['bucket']}): {shapes}")
        return 0
    target = build(SPEC, folder, args.workspace_mb, args.timing_cache, say)
    say(f"wrote {target}; it runs only on this GPU's compute capability, with this TensorRT version")
    return 0


if __name__ == "__main__":
    sys.exit(main())
