"""Checks of a Triton model repository: ``hashee validate-triton`` and the last step of ``export-triton``.

Every ``config.pbtxt`` must parse as Triton's ``ModelConfig`` protobuf (tritonclient's
``model_config_pb2`` through ``google.protobuf.text_format``), then pass semantic checks:

* the model's ``name`` equals its folder; a numeric version folder exists with the file its backend
  loads (``model.onnx``, ``model.py`` defining ``TritonPythonModel``, ``model.plan``);
* batching: ``dynamic_batching`` only with ``max_batch_size > 0``; with batching every ONNX input and
  output has the batch as its first axis (one shared dynamic axis, nowhere else);
* ONNX models: config inputs are exactly the graph's inputs, outputs a subset of its outputs, with
  the same dtypes, ranks and fixed sizes; no bool tensors where TensorRT is involved;
* ensembles: every step's model exists, input maps name that model's inputs and read ensemble inputs
  or outputs of earlier steps, output maps name its outputs, every ensemble output is produced, the
  dtypes agree along the chain, and no step batches less than the ensemble;
* warm-up samples name real inputs with the right dtype and shape, and their data files exist;
* ``tensorrt_plan`` models written by ``export-triton --backend tensorrt-plan``: the build script
  (``build_plans.py``) is executable and its ``SPEC`` (read with ``ast``, never run) names this model, an
  ONNX file that matches the config like any ONNX model, a plan path inside a version folder, and one
  valid profile per tokenizer bucket; ``instance_group`` lists every profile.  A plan not built yet is a
  problem naming the script, or a warning with ``allow_unbuilt_plans`` (export-triton itself writes
  the repository on a machine without the serving GPU).

:func:`check_repository` returns every problem found (an empty list: the repository is sound).
"""

from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path
from typing import Any

from hashee.errors import MissingDependencyError

INSTALL_HINT = "pip install 'hashee[serve]' (or: pip install tritonclient)"
# Triton DataType name -> (ONNX TensorProto elem type, numpy dtype name)
DTYPES = {
    "TYPE_BOOL": (9, "bool"), "TYPE_UINT8": (2, "uint8"), "TYPE_UINT16": (4, "uint16"), "TYPE_UINT32": (12, "uint32"),
    "TYPE_UINT64": (13, "uint64"), "TYPE_INT8": (3, "int8"), "TYPE_INT16": (5, "int16"), "TYPE_INT32": (6, "int32"),
    "TYPE_INT64": (7, "int64"), "TYPE_FP16": (10, "float16"), "TYPE_FP32": (1, "float32"), "TYPE_FP64": (11, "float64"),
    "TYPE_STRING": (8, "object"), "TYPE_BF16": (16, None),
}
DEFAULT_FILES = {"onnxruntime": "model.onnx", "python": "model.py", "tensorrt": "model.plan",
                 "tensorrt_plan": "model.plan", "pytorch": "model.pt", "libtorch": "model.pt"}

# The first four bytes of a serialized TensorRT engine (its magic tag): "ftrt" for a plan built for one
# GPU and TensorRT version, "ptrt" for a version-compatible plan that carries its lean runtime.  Any other
# start is refused by TensorRT's deserializer ("Magic tag does not match").
PLAN_MAGIC_TAGS = (b"ftrt", b"ptrt")
PLAN_SCRIPT = "build_plans.py"
MODEL_DIRECTORY = "$$TRITON_MODEL_DIRECTORY"  # Triton puts the model's folder here in EXECUTION_ENV_PATH
_PB2: Any = None


def model_config_pb2() -> Any:
    """tritonclient's ``model_config_pb2`` module (its grpc extra is not needed: the file is loaded directly)."""
    global _PB2
    if _PB2 is not None:
        return _PB2
    try:
        from tritonclient.grpc import model_config_pb2 as module  # with tritonclient[grpc]
    except ImportError:
        raise MissingDependencyError(f"checking a Triton repository needs tritonclient; {INSTALL_HINT}") from None
    except RuntimeError:  # tritonclient without its grpc extra refuses the package import, not the file
        spec = importlib.util.find_spec("tritonclient")
        path = Path(spec.origin).parent / "grpc" / "model_config_pb2.py" if spec and spec.origin else None
        if path is None or not path.is_file():
            raise MissingDependencyError(f"tritonclient has no grpc/model_config_pb2.py; {INSTALL_HINT}") from None
        loader_spec = importlib.util.spec_from_file_location("hashee_triton_model_config_pb2", path)
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    _PB2 = module
    return module


def parse_config(path: Path) -> Any:
    """The ``ModelConfig`` of a ``config.pbtxt``; raises ``google.protobuf.text_format.ParseError``."""
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    return text_format.Parse(path.read_text(encoding="utf-8"), pb2.ModelConfig())


def _dtype(config_value: int) -> str:
    return model_config_pb2().DataType.Name(config_value)


def _backend(config: Any) -> str:
    if config.platform == "ensemble":
        return "ensemble"
    if config.backend:
        return config.backend
    return {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "pytorch_libtorch": "pytorch"}.get(
        config.platform, config.platform or "?")


def _uses_tensorrt(config: Any) -> bool:
    if _backend(config) in ("tensorrt", "tensorrt_plan"):
        return True
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    return any(a.name == "tensorrt" for a in accelerators)


class _Model:
    def __init__(self, folder: Path, config: Any) -> None:
        self.folder, self.config = folder, config
        self.inputs = {i.name: i for i in config.input}
        self.outputs = {o.name: o for o in config.output}


def _versions(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def _onnx_dims(value: Any) -> list[Any]:
    dims = []
    for d in value.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return dims


def _check_onnx(model: _Model, path: Path, problems: list[str]) -> None:
    import onnx

    where = f"{model.folder.name}"
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a problem to report
        problems.append(f"{where}: {path} is not a readable ONNX model ({str(exc).splitlines()[0]})")
        return
    initializers = {i.name for i in proto.graph.initializer}
    graph_inputs = {v.name: v for v in proto.graph.input if v.name not in initializers}
    graph_outputs = {v.name: v for v in proto.graph.output}
    config = model.config
    batching = config.max_batch_size > 0
    for name in graph_inputs:
        if name not in model.inputs:
            problems.append(f"{where}: the ONNX model's input {name!r} is missing from config.pbtxt "
                            f"(config inputs: {', '.join(model.inputs) or 'none'})")
    for name in model.inputs:
        if name not in graph_inputs:
            problems.append(f"{where}: config input {name!r} is not an input of {path.name} "
                            f"(ONNX inputs: {', '.join(graph_inputs)})")
    for name in model.outputs:
        if name not in graph_outputs:
            problems.append(f"{where}: config output {name!r} is not an output of {path.name} "
                            f"(ONNX outputs: {', '.join(graph_outputs)})")
    pairs = [(n, model.inputs[n], graph_inputs[n], "input") for n in model.inputs if n in graph_inputs]
    pairs += [(n, model.outputs[n], graph_outputs[n], "output") for n in model.outputs if n in graph_outputs]
    batch_symbols: dict[str, str] = {}
    for name, spec, value, kind in pairs:
        want = DTYPES.get(_dtype(spec.data_type), (None,))[0]
        got = value.type.tensor_type.elem_type
        if want != got:
            got_name = onnx.TensorProto.DataType.Name(got) if got else "unknown"
            problems.append(f"{where}: {kind} {name!r} is {_dtype(spec.data_type)} in config.pbtxt but "
                            f"{got_name} in {path.name}")
        onnx_dims = _onnx_dims(value)
        config_dims = list(spec.reshape.shape) if spec.HasField("reshape") else list(spec.dims)
        expected_rank = len(config_dims) + (1 if batching else 0)
        if onnx_dims and len(onnx_dims) != expected_rank:
            problems.append(f"{where}: {kind} {name!r} has rank {len(onnx_dims)} in {path.name} {onnx_dims} but "
                            f"config dims {config_dims}{' plus the batch axis' if batching else ''} give rank "
                            f"{expected_rank}")
            continue
        model_dims = onnx_dims[1:] if batching else onnx_dims
        for axis, (c, o) in enumerate(zip(config_dims, model_dims)):
            if c != -1 and isinstance(o, int) and o > 0 and c != o:
                problems.append(f"{where}: {kind} {name!r} axis {axis + int(batching)} is {c} in config.pbtxt "
                                f"but {o} in {path.name}")
        if batching and onnx_dims:
            first = onnx_dims[0]
            if isinstance(first, int) and first > 0:
                problems.append(f"{where}: {kind} {name!r} is not batch-first: its first axis has fixed size {first} "
                                f"in {path.name}, but max_batch_size > 0 makes Triton stack requests on axis 0")
            elif isinstance(first, str):
                batch_symbols[f"{kind} {name!r}"] = first
    if batching and batch_symbols:
        # the batch axis is the dynamic first axis shared by most tensors (input_ids' when present)
        symbols = list(batch_symbols.values())
        batch = batch_symbols.get("input 'input_ids'") or max(set(symbols), key=symbols.count)
        for what, symbol in batch_symbols.items():
            if symbol != batch:
                problems.append(f"{where}: {what} is not batch-first: its first axis is {symbol!r} but the batch "
                                f"axis is {batch!r}; Triton's dynamic batching needs the batch first in every input "
                                f"(export with --embed-exit-table for a graph without exit_masks)")
        for name, _spec, value, kind in pairs:
            later = _onnx_dims(value)[1:]
            # a tensor whose first axis is not the batch was reported above
            if batch in later and batch_symbols.get(f"{kind} {name!r}") == batch:
                problems.append(f"{where}: {kind} {name!r} has the batch axis {batch!r} again at axis "
                                f"{1 + later.index(batch)}")


def _check_python(model: _Model, path: Path, problems: list[str]) -> None:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as exc:
        problems.append(f"{model.folder.name}: {path} does not parse as Python ({exc})")
        return
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    if "TritonPythonModel" not in classes:
        problems.append(f"{model.folder.name}: {path} defines no class TritonPythonModel")
    elif "execute" not in {f.name for f in classes["TritonPythonModel"].body if isinstance(f, ast.FunctionDef)}:
        problems.append(f"{model.folder.name}: TritonPythonModel in {path} has no execute method")


def read_plan_spec(script: Path) -> dict[str, Any]:
    """The ``SPEC = {...}`` literal of a ``build_plans.py`` (parsed, never executed); ValueError when absent."""
    tree = ast.parse(script.read_text(encoding="utf-8"), filename=str(script))
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["SPEC"]:
            spec = ast.literal_eval(node.value)
            if not isinstance(spec, dict) or not spec:
                raise ValueError("SPEC is empty")
            return spec
    raise ValueError("no top-level SPEC = {...} assignment")


def _serves(profile: Any, width: int, max_batch_size: int) -> bool:
    """Whether every input's [batch, sequence] range of ``profile`` holds batch 1..max_batch_size at ``width``."""
    try:
        return bool(profile["shapes"]) and all(
            low[0] <= 1 and high[0] >= max_batch_size and low[1] <= width <= high[1]
            for low, _, high in profile["shapes"].values())
    except (IndexError, KeyError, TypeError, ValueError):
        return False


def _check_plan_header(name: str, path: Path, problems: list[str]) -> None:
    """A TensorRT plan starts with one of :data:`PLAN_MAGIC_TAGS`; anything else cannot deserialize."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        problems.append(f"{name}: {path} is empty")
    elif head not in PLAN_MAGIC_TAGS:
        problems.append(f"{name}: {path} is not a TensorRT plan: it starts with {head!r}, not with "
                        f"{' or '.join(repr(t) for t in PLAN_MAGIC_TAGS)} (TensorRT's magic tag); build it with "
                        f"{PLAN_SCRIPT} or trtexec on the serving GPU")


def _check_plan_build(model: _Model, script: Path, problems: list[str]) -> dict[str, Any] | None:
    """The build script of a ``tensorrt_plan`` model against its config (see the module docstring)."""
    where, config = model.folder.name, model.config
    if not os.access(script, os.X_OK):
        problems.append(f"{where}: {script} is not executable (chmod +x it; users run it on the serving GPU)")
    try:
        spec = read_plan_spec(script)
        profiles, inputs = list(spec["profiles"]), list(spec["inputs"])
    except (SyntaxError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        problems.append(f"{where}: {script.name} has no readable SPEC ({exc})")
        return None
    if spec.get("model") != where:
        problems.append(f"{where}: {script.name} builds the plan of {spec.get('model')!r}, not of {where!r}")
    if sorted(inputs) != sorted(model.inputs):
        problems.append(f"{where}: {script.name} builds for inputs {inputs}, config.pbtxt declares "
                        f"{list(model.inputs)}")
    filename = config.default_model_filename or DEFAULT_FILES["tensorrt"]
    plan = Path(str(spec.get("plan", "")))
    if len(plan.parts) != 2 or not plan.parts[0].isdigit() or plan.name != filename:
        problems.append(f"{where}: {script.name} writes {plan}, but Triton loads VERSION/{filename}")
    onnx_file = model.folder / str(spec.get("onnx", ""))
    if not onnx_file.is_file():
        problems.append(f"{where}: {script.name} builds from {spec.get('onnx')!r}, which is not in {model.folder}")
    else:
        _check_onnx(model, onnx_file, problems)
    if not spec.get("strongly_typed"):
        problems.append(f"{where}: {script.name} builds a weakly typed network; TensorRT 11 only builds strongly "
                        f"typed ones (precision from the ONNX file)")
    batch_axis = 1 if config.max_batch_size > 0 else 0
    for number, profile in enumerate(profiles):
        label = f"{where}: {script.name} profile {number}"
        shapes = profile.get("shapes", {}) if isinstance(profile, dict) else {}
        if sorted(shapes) != sorted(model.inputs):
            problems.append(f"{label} gives shapes for {sorted(shapes)}, the model takes {sorted(model.inputs)}")
        for name, triple in shapes.items():
            try:
                low, opt, high = (list(map(int, s)) for s in triple)
            except (TypeError, ValueError):
                problems.append(f"{label}: {name} needs (min, opt, max) shapes, got {triple!r}")
                continue
            rank = len(model.inputs[name].dims) + batch_axis if name in model.inputs else len(low)
            if not len(low) == len(opt) == len(high) == rank:
                problems.append(f"{label}: {name} shapes {low}/{opt}/{high} are not of rank {rank}")
            elif low[0] < 1 or not all(a <= b <= c for a, b, c in zip(low, opt, high)):
                problems.append(f"{label}: {name} min {low} / opt {opt} / max {high} are out of order")
            elif config.max_batch_size > 0 and high[0] > config.max_batch_size:
                problems.append(f"{label}: {name} batch {high[0]} > max_batch_size {config.max_batch_size}")
    for width in spec.get("buckets", []):
        if not any(_serves(p, width, config.max_batch_size) for p in profiles):
            problems.append(f"{where}: no profile of {script.name} serves bucket {width} at batch 1.."
                            f"{config.max_batch_size}")
    listed = [p for group in config.instance_group for p in group.profile]
    if len(profiles) > 1 and sorted(listed) != sorted(str(i) for i in range(len(profiles))):
        problems.append(f"{where}: instance_group lists profiles {listed} but {script.name} builds "
                        f"{len(profiles)} (list \"0\"..\"{len(profiles) - 1}\": Triton only picks among listed "
                        f"profiles, and uses profile 0 alone when none is listed)")
    return spec


def _check_execution_env(model: _Model, problems: list[str]) -> None:
    """``EXECUTION_ENV_PATH`` (the Python backend's environment) is absolute or inside the model's folder."""
    value = model.config.parameters.get("EXECUTION_ENV_PATH")
    if value is None:
        return
    path, where = value.string_value, model.folder.name
    if path.startswith(MODEL_DIRECTORY):
        local = model.folder / path[len(MODEL_DIRECTORY):].lstrip("/")
        if not local.exists():
            problems.append(f"{where}: EXECUTION_ENV_PATH {path} names {local}, which does not exist")
    elif not path.startswith("/"):
        problems.append(f"{where}: EXECUTION_ENV_PATH {path!r} must be an absolute path on the server or start with "
                        f"{MODEL_DIRECTORY}")


def _check_warmup(model: _Model, problems: list[str]) -> None:
    import numpy as np

    config, where = model.config, model.folder.name
    for sample in config.model_warmup:
        label = f"{where}: warm-up {sample.name!r}"
        if config.max_batch_size and sample.batch_size > config.max_batch_size:
            problems.append(f"{label} has batch_size {sample.batch_size} > max_batch_size {config.max_batch_size}")
        for name, spec in sample.inputs.items():
            if name not in model.inputs:
                problems.append(f"{label} names input {name!r}, which the model does not have")
                continue
            declared = model.inputs[name]
            if spec.data_type != declared.data_type:
                problems.append(f"{label}: input {name!r} is {_dtype(spec.data_type)} but the model takes "
                                f"{_dtype(declared.data_type)}")
            dims = list(declared.dims)
            if len(spec.dims) != len(dims) or any(d != -1 and d != s for d, s in zip(dims, spec.dims)):
                problems.append(f"{label}: input {name!r} has dims {list(spec.dims)}, the model takes {dims}")
            if spec.WhichOneof("input_data_type") == "input_data_file":
                path = model.folder / "warmup" / spec.input_data_file
                if not path.is_file():
                    problems.append(f"{label}: data file {path} does not exist")
                else:
                    numpy_name = DTYPES.get(_dtype(spec.data_type), (None, None))[1]
                    if numpy_name not in (None, "object"):
                        size = int(np.prod(list(spec.dims))) * np.dtype(numpy_name).itemsize
                        if path.stat().st_size != size:
                            problems.append(f"{label}: data file {path.name} holds {path.stat().st_size} bytes, "
                                            f"dims {list(spec.dims)} of {numpy_name} need {size}")
        missing = [n for n, i in model.inputs.items() if n not in sample.inputs and not i.optional]
        if missing:
            problems.append(f"{label} gives no data for input(s) {', '.join(missing)}")


def _check_accelerator(model: _Model, problems: list[str]) -> None:
    where = model.folder.name
    for accelerator in model.config.optimization.execution_accelerators.gpu_execution_accelerator:
        if accelerator.name != "tensorrt":
            continue
        for key in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
            value = accelerator.parameters.get(key)
            if not value:
                continue
            for item in value.split(","):
                name, _, shape = item.rpartition(":")
                if name not in model.inputs:
                    problems.append(f"{where}: {key} names {name!r}, which is not an input")
                    continue
                dims = shape.split("x")
                rank = len(model.inputs[name].dims) + (1 if model.config.max_batch_size > 0 else 0)
                if len(dims) != rank or not all(d.isdigit() for d in dims):
                    problems.append(f"{where}: {key} gives {name!r} the shape {shape}, expected {rank} sizes")
                elif model.config.max_batch_size > 0 and int(dims[0]) > model.config.max_batch_size:
                    problems.append(f"{where}: {key} gives {name!r} batch {dims[0]} > max_batch_size "
                                    f"{model.config.max_batch_size}")


def _check_ensemble(model: _Model, models: dict[str, _Model], problems: list[str]) -> None:
    config, where = model.config, model.folder.name
    steps = config.ensemble_scheduling.step
    if not steps:
        problems.append(f"{where}: the ensemble has no ensemble_scheduling steps")
        return
    # tensor name -> (dtype, who makes it)
    available: dict[str, tuple[int, str]] = {n: (i.data_type, "ensemble input") for n, i in model.inputs.items()}
    optional = {n for n, i in model.inputs.items() if i.optional}
    for number, step in enumerate(steps, 1):
        label = f"{where}: step {number} ({step.model_name})"
        target = models.get(step.model_name)
        if target is None:
            problems.append(f"{label}: no model {step.model_name!r} in the repository")
            continue
        if config.max_batch_size > target.config.max_batch_size:
            problems.append(f"{label}: the ensemble's max_batch_size {config.max_batch_size} exceeds the model's "
                            f"{target.config.max_batch_size}")
        for key, tensor in step.input_map.items():
            if key not in target.inputs:
                problems.append(f"{label}: input_map key {key!r} is not an input of {step.model_name} "
                                f"(inputs: {', '.join(target.inputs)})")
                continue
            if tensor not in available:
                problems.append(f"{label}: input_map reads {tensor!r}, which is neither an ensemble input nor an "
                                f"output of an earlier step (available: {', '.join(available)})")
                continue
            dtype, source = available[tensor]
            if dtype != target.inputs[key].data_type:
                problems.append(f"{label}: {tensor!r} is {_dtype(dtype)} ({source}) but {step.model_name} input "
                                f"{key!r} takes {_dtype(target.inputs[key].data_type)}")
            if tensor in optional and not target.inputs[key].optional:
                problems.append(f"{label}: optional ensemble input {tensor!r} feeds the required input {key!r}")
        for key, spec in target.inputs.items():
            if key not in step.input_map and not spec.optional:
                problems.append(f"{label}: required input {key!r} of {step.model_name} is not in input_map")
        for key, tensor in step.output_map.items():
            if key not in target.outputs:
                problems.append(f"{label}: output_map key {key!r} is not an output of {step.model_name} "
                                f"(outputs: {', '.join(target.outputs)})")
                continue
            available[tensor] = (target.outputs[key].data_type, f"output {key!r} of {step.model_name}")
    for name, spec in model.outputs.items():
        if name not in available or available[name][1] == "ensemble input":
            problems.append(f"{where}: ensemble output {name!r} is produced by no step's output_map")
        elif available[name][0] != spec.data_type:
            problems.append(f"{where}: ensemble output {name!r} is {_dtype(spec.data_type)} but "
                            f"{available[name][1]} is {_dtype(available[name][0])}")


def check_repository(repo: str | Path, allow_unbuilt_plans: bool = False,
                     warnings: list[str] | None = None) -> list[str]:
    """Every problem of the Triton model repository ``repo`` (empty list: it passes).

    With ``allow_unbuilt_plans`` a ``tensorrt_plan`` model whose build script has not yet built its plan
    is appended to ``warnings`` (when given) instead of being a problem.
    """
    repo = Path(repo)
    if not repo.is_dir():
        return [f"{repo} is not a folder"]
    model_config_pb2()  # fail early with the install hint
    problems: list[str] = []
    plan_specs: dict[str, dict[str, Any]] = {}
    folders = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        return [f"{repo} holds no model folders"]
    models = _load_models(folders, problems)
    for name, model in sorted({m.folder.name: m for m in models.values()}.items()):
        config = model.config
        backend = _backend(config)
        _check_tensors(name, config, problems)
        versions = _versions(model.folder)
        if not versions:
            problems.append(f"{name}: no version folder (e.g. {name}/1/); Triton loads models from numbered folders")
        if backend == "ensemble":
            _check_ensemble(model, models, problems)
        else:
            spec = _check_model_files(name, model, backend, versions, allow_unbuilt_plans, warnings, problems)
            if spec is not None:
                plan_specs[name] = spec
        if config.model_warmup:
            _check_warmup(model, problems)
        _check_accelerator(model, problems)
    _check_plan_buckets(models, plan_specs, problems)
    return problems


def _load_models(folders: list[Path], problems: list[str]) -> dict[str, _Model]:
    """Parse every model folder's ``config.pbtxt``; models by config name and by folder name."""
    from google.protobuf import text_format

    models: dict[str, _Model] = {}
    for folder in folders:
        path = folder / "config.pbtxt"
        if not path.is_file():
            problems.append(f"{folder.name}: no config.pbtxt")
            continue
        try:
            config = parse_config(path)
        except text_format.ParseError as exc:
            problems.append(f"{folder.name}: config.pbtxt does not parse as Triton's ModelConfig: {exc}")
            continue
        except UnicodeDecodeError:
            problems.append(f"{folder.name}: config.pbtxt is not UTF-8 text")
            continue
        if config.name != folder.name:
            problems.append(f"{folder.name}: config name {config.name!r} differs from its folder {folder.name!r} "
                            f"(Triton requires them equal)")
        models[config.name or folder.name] = model = _Model(folder, config)
        if folder.name != config.name:
            models[folder.name] = model
    return models


def _check_tensors(name: str, config: Any, problems: list[str]) -> None:
    """Batching settings and the declared inputs and outputs: unique names, valid dims, no bool with TensorRT."""
    if config.max_batch_size < 0:
        problems.append(f"{name}: max_batch_size must be >= 0")
    if config.HasField("dynamic_batching") and config.max_batch_size == 0:
        problems.append(f"{name}: dynamic_batching needs max_batch_size > 0")
    for kind, specs in (("input", config.input), ("output", config.output)):
        seen = set()
        for spec in specs:
            if spec.name in seen:
                problems.append(f"{name}: {kind} {spec.name!r} is declared twice")
            seen.add(spec.name)
            if not spec.dims and not spec.HasField("reshape"):
                problems.append(f"{name}: {kind} {spec.name!r} has no dims")
            if any(d == 0 or d < -1 for d in spec.dims):
                problems.append(f"{name}: {kind} {spec.name!r} has invalid dims {list(spec.dims)}")
            if _uses_tensorrt(config) and _dtype(spec.data_type) == "TYPE_BOOL":
                problems.append(f"{name}: {kind} {spec.name!r} is TYPE_BOOL but TensorRT is involved; use "
                                f"TYPE_INT32 at the model boundary")


def _check_model_files(name: str, model: _Model, backend: str, versions: list[Path], allow_unbuilt_plans: bool,
                       warnings: list[str] | None, problems: list[str]) -> dict[str, Any] | None:
    """A non-ensemble model's files in each version folder (and a plan model's build script).

    Returns the plan build script's spec, when the model has one.
    """
    config = model.config
    filename = config.default_model_filename or DEFAULT_FILES.get(backend)
    if filename is None:
        problems.append(f"{name}: unknown backend/platform {backend!r}")
    script = model.folder / PLAN_SCRIPT
    spec = _check_plan_build(model, script, problems) if backend == "tensorrt" and script.is_file() else None
    for version in versions:
        path = version / (filename or "")
        if filename and not path.exists() and spec is not None:
            message = (f"{name}: version {version.name} has no {filename} yet: build it on the serving GPU "
                       f"with python3 {script} (plans only run on the compute capability they were built "
                       f"for)")
            if allow_unbuilt_plans:
                if warnings is not None:
                    warnings.append(message)
            else:
                problems.append(message + "; validate-triton --allow-unbuilt-plans accepts it")
        elif filename and not path.exists():
            problems.append(f"{name}: version {version.name} has no {filename}")
        elif backend == "tensorrt":
            _check_plan_header(name, path, problems)
        elif backend == "onnxruntime":
            _check_onnx(model, path, problems)
        elif backend == "python":
            _check_python(model, path, problems)
    if backend == "python":
        _check_execution_env(model, problems)
    for version in versions:  # files the python model's parameters point at
        for key, value in config.parameters.items():
            if key.endswith("_file") and not (version / value.string_value).is_file():
                problems.append(f"{name}: parameter {key} names {value.string_value}, missing from "
                                f"version {version.name}")
    return spec


def _check_plan_buckets(models: dict[str, _Model], plan_specs: dict[str, dict[str, Any]],
                        problems: list[str]) -> None:
    """In an ensemble, the plan's profiles are built for the buckets its tokenizer step pads to."""
    for model in {m.folder.name: m for m in models.values()}.values():
        if model.config.platform != "ensemble":
            continue
        steps = [s.model_name for s in model.config.ensemble_scheduling.step]
        padders = {n: models[n].config.parameters["buckets"].string_value for n in steps
                   if n in models and "buckets" in models[n].config.parameters}
        for plan in (n for n in steps if n in plan_specs):
            built = sorted(int(w) for w in plan_specs[plan].get("buckets", []))
            for padder, value in padders.items():
                try:
                    widths = sorted(int(w) for w in value.split(","))
                except ValueError:
                    problems.append(f"{padder}: parameter buckets {value!r} is not a list of integers")
                    continue
                if widths != built:
                    problems.append(f"{model.folder.name}: {padder} pads to buckets {widths} but {plan}'s "
                                    f"{PLAN_SCRIPT} builds profiles for {built}")


def format_problems(repo: Path, problems: list[str]) -> str:
    return f"{repo}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems)


__all__ = ["check_repository", "format_problems", "model_config_pb2", "parse_config", "read_plan_spec"]
