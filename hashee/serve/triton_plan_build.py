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


def import_tensorrt():
    """The tensorrt module; SystemExit with the reason when it is absent or cannot load its libraries."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        raise SystemExit(f"build_plans.py: cannot import tensorrt ({exc}). Install the TensorRT Python package "
                         f"matching the server's TensorRT; TensorRT's library wheels on PyPI only download from "
                         f"NVIDIA's index (pypi.nvidia.com) at install time") from None
    return trt


def write_atomically(path, data):
    """Write ``data`` to ``path`` through a temporary file in the same folder and os.replace."""
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".partial", dir=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def attach_timing_cache(config, path, say):
    """Give ``config`` the timing cache at ``path`` (a fresh one when it is absent or TensorRT refuses it:
    ``set_timing_cache`` returns False for a cache made on another GPU or TensorRT version)."""
    blob = b""
    if path and os.path.isfile(path):
        try:
            with open(path, "rb") as handle:
                blob = handle.read()
        except OSError as exc:
            say(f"warning: cannot read the timing cache {path} ({exc}); building without it")
    if blob:
        cache = config.create_timing_cache(blob)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return True
        say(f"warning: TensorRT refused the timing cache {path} (another GPU or TensorRT version?); "
            f"building with a fresh one, which replaces it afterwards")
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, ignore_mismatch=False):
        say("warning: TensorRT could not create an empty timing cache; building without one")
    return False


def save_timing_cache(config, path, say):
    """Write ``config``'s timing cache to ``path`` atomically; only a warning when TensorRT gives none back
    (``get_timing_cache()`` may return None) or it cannot be written: the plan is already on disk."""
    cache = config.get_timing_cache()
    if cache is None:
        say(f"warning: TensorRT returned no timing cache; {path} is left as it was")
        return False
    try:
        blob = cache.serialize()
        data = bytes(blob) if blob is not None else b""
        if not data:
            say(f"warning: TensorRT serialized an empty timing cache; {path} is left as it was")
            return False
        write_atomically(path, data)
    except (RuntimeError, TypeError, ValueError, OSError) as exc:
        say(f"warning: cannot save the timing cache to {path} ({exc}); the plan is written all the same")
        return False
    return True


def build(spec, folder, workspace_mb, timing_cache, say):
    trt = import_tensorrt()

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
    if timing_cache:
        attach_timing_cache(config, timing_cache, say)
    say(f"building {len(spec['profiles'])} profile(s), precision from the ONNX file ({spec['precision']}), "
        f"workspace {workspace_mb} MiB, TensorRT {trt.__version__}")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SystemExit(f"TensorRT could not build a plan from {onnx_path} (see its log above)")
    target = os.path.join(folder, spec["plan"])
    write_atomically(target, bytes(plan))  # the plan first: a timing cache problem never loses it
    if timing_cache:
        save_timing_cache(config, timing_cache, say)
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
