"""``hashee export-triton``: a bundle -> a validated Triton Inference Server model repository.

::

    REPO/
      hashee/                 ensemble: TEXT (+ optional TEXT_PAIR) -> logits
        config.pbtxt
        1/
      hashee_tokenizer/       Python backend: tokenise, pad to the smallest bucket, mean-exit-layer metric
        config.pbtxt
        1/model.py
        1/tokenizer/tokenizer.json
        1/exit_table.npy
        1/hashee_prefix.py    prefix-layout bundles only: a copy of hashee/prefix.py (sort rows, exit masks)
      hashee_model/           onnxruntime backend, dynamic batching, warm-up at the smallest/largest bucket
        config.pbtxt
        1/model.onnx          the exit table embedded: inputs input_ids, attention_mask (token_type_ids);
                              prefix layout: the bundle's graph, + position_ids, exit_mask_1..L
        warmup/...

With ``--backend tensorrt-plan`` the model is a ``tensorrt_plan`` model instead::

      hashee_model/           platform tensorrt_plan, dynamic batching, one profile per bucket in instance_group
        config.pbtxt
        build_plans.py        run on the serving GPU: builds 1/model.plan (strongly typed, profiles = buckets)
        onnx/model.onnx       the tensorrt-target graph, exit table embedded, int32 inputs
        1/                    model.plan goes here (plans only run on the compute capability they were built for)
        warmup/...

The model graph is the bundle's with the exit table embedded (:mod:`hashee.exporter.embed`), since
Triton's dynamic batching needs every input batch-first; with ``--backend tensorrt`` its integer
and bool inputs become int32 (TensorRT's native index type; no bool tensors cross the boundary) and the
config turns on ONNX Runtime's TensorRT execution accelerator with an engine cache and one
optimisation profile per bucket.  Rewritten graphs are checked against the bundle's own graph
(1e-5) and the finished repository against Triton's ``ModelConfig`` schema and the semantic checks
of :mod:`hashee.serve.triton_check`; nothing is written when either fails.

A **prefix-layout** bundle (``hashee export --layout prefix``, issue 14) keeps its graph (no table to
embed: the host sorts each row by exit layer).  The tokenizer model then also outputs ``position_ids``
and ``exit_mask_1 .. exit_mask_L`` ``[batch, W_l]`` (bool; int32 with TensorRT), made by
``plan_prefix`` of a copy of :mod:`hashee.prefix` shipped beside its ``model.py``
(``1/hashee_prefix.py``); the model and ensemble declare and wire them with dims ``[-1]``.  How ``W_l``
is chosen so that Triton's dynamic batcher can stack requests (it only stacks equal shapes) is in
:mod:`hashee.serve.triton_tokenizer`.  TensorRT profiles give ``exit_mask_l`` the widths of
:meth:`hashee.engines.Profile.width_range` at each bucket.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hashee.bundle import FP16_FILE, TABLE_FILE, TOKENIZER_DIR, check_output_folder, open_bundle, staged_folder
from hashee.bundle import tokenizer_config as read_tokenizer_config
from hashee.engines import Profile, mask_layer
from hashee.errors import ExportError, TritonRepositoryError, ValidationError
from hashee.exporter.embed import MASKS, embed_exit_table
from hashee.exporter.validate import check_embedded
from hashee.prefix import is_prefix_graph, mask_names, plan_prefix
from hashee.runtime.batching import pad_to
from hashee.runtime.inputs import TextEncoder
from hashee.runtime.session import _special
from hashee.samples import sample_texts
from hashee.serve.triton_check import check_repository, format_problems, model_config_pb2

BACKENDS = ("onnxruntime", "tensorrt", "tensorrt-plan")
TOKENIZER_SOURCE = Path(__file__).with_name("triton_tokenizer.py")
PLAN_SCRIPT_SOURCE = Path(__file__).with_name("triton_plan_build.py")
PLAN_SCRIPT = "build_plans.py"  # next to the plan model's config.pbtxt
PLAN_ONNX = "onnx/model.onnx"  # the graph the plan is built from, outside the version folders
PREFIX_SOURCE = Path(__file__).resolve().parent.parent / "prefix.py"  # hashee.prefix, shipped to the tokenizer
PREFIX_FILE = "hashee_prefix.py"  # its name beside the tokenizer's model.py
PREFIX_IMPORT = "from hashee.errors import InputError\n"  # its one hashee import, replaced in the copy
TYPE = {np.dtype("int64"): "TYPE_INT64", np.dtype("int32"): "TYPE_INT32", np.dtype("bool"): "TYPE_BOOL"}
TOKEN_INPUTS = ("input_ids", "attention_mask", "position_ids", "token_type_ids")  # what the tokenizer makes


@dataclass
class TritonExport:
    """What :func:`export_triton` wrote."""

    repo: Path
    models: dict[str, str]  # role -> model name
    backend: str
    buckets: list[int]
    max_batch_size: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def tree(self) -> str:
        return repository_tree(self.repo)

    def format(self) -> str:
        lines = [f"repository: {self.repo} (backend {self.backend}, buckets {','.join(map(str, self.buckets))}, "
                 f"max_batch_size {self.max_batch_size})",
                 f"ensemble {self.models['ensemble']}: {self.models['tokenizer']} -> {self.models['model']}",
                 "checked: every config.pbtxt parses as Triton's ModelConfig and passes the semantic checks",
                 *self.notes, self.tree(), f"export took {self.seconds:.1f} s"]
        return "\n".join(lines)


def repository_tree(repo: Path) -> str:
    """The folder as an indented tree (files with their sizes)."""
    lines = [f"{repo.name}/"]

    def walk(folder: Path, depth: int) -> None:
        for path in sorted(folder.iterdir(), key=lambda p: (p.is_file(), p.name)):
            if path.is_dir():
                lines.append(f"{'  ' * depth}{path.name}/")
                walk(path, depth + 1)
            else:
                lines.append(f"{'  ' * depth}{path.name} ({_size(path.stat().st_size)})")

    walk(repo, 1)
    return "\n".join(lines)


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


def parse_buckets(value: str | Sequence[int]) -> list[int]:
    """``"32,64,128"`` or a sequence -> sorted unique ints >= 2; :class:`ExportError` otherwise."""
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        buckets = sorted({int(str(b).strip()) for b in items if str(b).strip()})
    except ValueError:
        raise ExportError(f"--buckets must be comma-separated integers, got {value!r}") from None
    if not buckets or buckets[0] < 2:
        raise ExportError(f"--buckets must be integers >= 2 (room for [CLS] and [SEP]), got {value!r}")
    return buckets


def int32_inputs(model: Any) -> Any:
    """A copy of ``model`` whose int64 and bool graph inputs are int32 (cast back right inside the graph)."""
    import onnx
    from onnx import TensorProto, helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    casts = []
    renamed: dict[str, str] = {}
    for value in graph.input:
        kind = value.type.tensor_type.elem_type
        if kind in (TensorProto.INT64, TensorProto.BOOL):
            suffix = "int64" if kind == TensorProto.INT64 else "bool"
            inner = f"{value.name}/{suffix}"
            renamed[value.name] = inner
            value.type.tensor_type.elem_type = TensorProto.INT32
            casts.append(helper.make_node("Cast", [value.name], [inner], name=f"inputs/{value.name}/to_{suffix}",
                                          to=kind))
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + old)
    return out


def _pbtxt_tensor(name: str, dtype: str, dims: Sequence[int], optional: bool = False) -> str:
    extra = " optional: true" if optional else ""
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ]{extra} }}'


def _pbtxt_list(key: str, items: list[str]) -> str:
    return f"{key} [\n" + ",\n".join(items) + "\n]\n"


def _params(values: dict[str, str]) -> str:
    return "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in values.items())


def tokenizer_config(name: str, max_batch_size: int, instances: int, outputs: dict[str, str],
                     params: dict[str, str]) -> str:
    """The tokenizer's ``config.pbtxt``; ``outputs`` maps each output to its Triton dtype (dims ``[-1]``)."""
    return (
        "# hashee tokenizer (Python backend): needs numpy and tokenizers in the backend's Python environment\n"
        "# (EXECUTION_ENV_PATH below when set: export-triton --python-env; tritonserver 2.51's stub needs numpy<2)\n"
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
        + _pbtxt_list("input", [_pbtxt_tensor("TEXT", "TYPE_STRING", [1]),
                                _pbtxt_tensor("TEXT_PAIR", "TYPE_STRING", [1], optional=True)])
        + _pbtxt_list("output", [_pbtxt_tensor(o, dtype, [-1]) for o, dtype in outputs.items()])
        + "dynamic_batching { }\n"
        + f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n"
        + _params(params)
    )


def model_config(name: str, max_batch_size: int, inputs: dict[str, str], num_labels: int,
                 warmups: list[str], accelerator: str | None) -> str:
    """The onnxruntime model's ``config.pbtxt``; ``inputs`` maps each input to its Triton dtype (dims ``[-1]``)."""
    text = (
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch_size}\n'
        + _pbtxt_list("input", [_pbtxt_tensor(i, dtype, [-1]) for i, dtype in inputs.items()])
        + _pbtxt_list("output", [_pbtxt_tensor("logits", "TYPE_FP32", [num_labels])])
        + "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"
    )
    if accelerator:
        text += "instance_group [ { count: 1 kind: KIND_GPU } ]\n" + accelerator
    return text + _pbtxt_list("model_warmup", warmups)


def _warmup(sample: str, batch_size: int, inputs: dict[str, tuple[str, str, int]]) -> str:
    """One ``model_warmup`` entry; ``inputs`` maps each input to (data file, Triton dtype, width)."""
    entries = "\n".join(
        f'    inputs {{ key: "{name}" value {{ data_type: {dtype} dims: [ {width} ] input_data_file: "{file}" }} }}'
        for name, (file, dtype, width) in inputs.items())
    return f'  {{\n    name: "{sample}"\n    batch_size: {batch_size}\n{entries}\n  }}'


def bucket_shapes(name: str, width: int, max_batch_size: int, num_layers: int) -> tuple[list[int], ...]:
    """(min, opt, max) shapes of input ``name`` in the TensorRT profile of bucket ``width``: ``[1, width]`` to
    ``[max_batch_size, width]``; a prefix-layout ``exit_mask_l`` gets :meth:`Profile.width_range`'s widths."""
    profile = Profile((1, max_batch_size, max_batch_size), (width, width, width))
    return tuple(list(shape) for shape in profile.shapes(name, num_layers))


def _accelerator(inputs: list[str], buckets: list[int], max_batch_size: int, fp16: bool, cache: str,
                 num_layers: int) -> str:
    def shapes(which: int) -> str:
        return ",".join(f"{name}:{'x'.join(map(str, bucket_shapes(name, width, max_batch_size, num_layers)[which]))}"
                        for width in buckets for name in inputs)

    params = {"precision_mode": "FP16" if fp16 else "FP32", "max_workspace_size_bytes": str(4 << 30),
              "trt_engine_cache_enable": "1", "trt_engine_cache_path": cache,
              "trt_profile_min_shapes": shapes(0), "trt_profile_opt_shapes": shapes(1),
              "trt_profile_max_shapes": shapes(2)}
    body = "\n".join(f'        parameters {{ key: "{k}" value: "{v}" }}' for k, v in params.items())
    return ("optimization { execution_accelerators {\n  gpu_execution_accelerator : [ {\n"
            f'        name : "tensorrt"\n{body}\n  }} ]\n}} }}\n')


def plan_config(name: str, max_batch_size: int, inputs: list[str], num_labels: int, warmups: list[str],
                profiles: int) -> str:
    listed = ", ".join(f'"{i}"' for i in range(profiles))
    return (
        f"# {PLAN_SCRIPT} (next to this file) builds 1/model.plan on the serving GPU; one optimisation profile per\n"
        "# tokenizer bucket, all listed in instance_group so Triton picks the one that fits each batch\n"
        f'name: "{name}"\nplatform: "tensorrt_plan"\nmax_batch_size: {max_batch_size}\n'
        + _pbtxt_list("input", [_pbtxt_tensor(i, "TYPE_INT32", [-1]) for i in inputs])
        + _pbtxt_list("output", [_pbtxt_tensor("logits", "TYPE_FP32", [num_labels])])
        + "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"
        + f"instance_group [ {{ count: 1 kind: KIND_GPU profile: [ {listed} ] }} ]\n"
        + _pbtxt_list("model_warmup", warmups)
    )


def plan_spec(model: str, inputs: list[str], buckets: list[int], max_batch_size: int, precision: str,
              workspace_mb: int = 4096, num_layers: int = 0) -> dict[str, Any]:
    """What ``build_plans.py`` builds: one profile per bucket, ``[1, width]`` to ``[max_batch_size, width]``
    (a prefix-layout ``exit_mask_l``: see :func:`bucket_shapes`)."""
    return {"model": model, "onnx": PLAN_ONNX, "plan": "1/model.plan", "strongly_typed": True,
            "precision": precision, "workspace_mb": workspace_mb, "max_batch_size": max_batch_size,
            "inputs": list(inputs), "buckets": list(buckets),
            "profiles": [{"bucket": width, "shapes": {name: list(bucket_shapes(name, width, max_batch_size, num_layers))
                                                      for name in inputs}}
                         for width in buckets]}


def write_plan_script(path: Path, spec: dict[str, Any]) -> None:
    """Copy the build script template with ``SPEC`` filled in (a literal: tools read it with ``ast``)."""
    import pprint

    template = PLAN_SCRIPT_SOURCE.read_text(encoding="utf-8")
    marker = "SPEC = {}\n"
    if template.count(marker) != 1:
        raise ExportError(f"{PLAN_SCRIPT_SOURCE} lost its 'SPEC = {{}}' line")
    path.write_text(template.replace(marker, f"SPEC = {pprint.pformat(spec, width=100, sort_dicts=False)}\n"),
                    encoding="utf-8")
    path.chmod(0o755)


def ensemble_config(name: str, max_batch_size: int, tokenizer: str, model: str, tensors: list[str],
                    num_labels: int) -> str:
    feed = "\n".join(f'      input_map {{ key: "{k}" value: "{k}" }}' for k in ("TEXT", "TEXT_PAIR"))
    made = "\n".join(f'      output_map {{ key: "{t}" value: "{t}" }}' for t in tensors)
    used = "\n".join(f'      input_map {{ key: "{t}" value: "{t}" }}' for t in tensors)
    return (
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch_size}\n'
        + _pbtxt_list("input", [_pbtxt_tensor("TEXT", "TYPE_STRING", [1]),
                                _pbtxt_tensor("TEXT_PAIR", "TYPE_STRING", [1], optional=True)])
        + _pbtxt_list("output", [_pbtxt_tensor("logits", "TYPE_FP32", [num_labels])])
        + "ensemble_scheduling {\n  step [\n"
        + f'    {{\n      model_name: "{tokenizer}"\n      model_version: -1\n{feed}\n{made}\n    }},\n'
        + f'    {{\n      model_name: "{model}"\n      model_version: -1\n{used}\n'
        + '      output_map { key: "logits" value: "logits" }\n    }\n  ]\n}\n'
    )


def export_triton(bundle: str | Path, repo: str | Path, backend: str = "onnxruntime", max_batch_size: int = 64,
                  buckets: str | Sequence[int] = (32, 64, 128), fp16: bool = False, tokenizer_instances: int = 1,
                  name: str = "hashee", overwrite: bool = False,
                  engine_cache: str = "/tmp/hashee_trt_cache", python_env: str | None = None) -> TritonExport:
    """Write a Triton model repository for a HashEE bundle at ``repo`` and check it.

    Args:
        bundle: a folder written by ``hashee export`` (any target; with or without ``--embed-exit-table``).
        repo: the repository folder; must not exist or be empty unless ``overwrite``.
        backend: ``onnxruntime`` (CPU or CUDA, whatever the server has), ``tensorrt`` (ONNX Runtime's
            TensorRT accelerator: int32 inputs, engine cache, one profile per bucket) or ``tensorrt-plan``
            (a ``tensorrt_plan`` model: the tensorrt-target graph with int32 inputs and ``build_plans.py``,
            which the user runs on the serving GPU to build ``1/model.plan``, one profile per bucket;
            needs a bundle exported with ``--target tensorrt``).
        max_batch_size: the most texts Triton batches into one model call.
        buckets: the widths the tokenizer pads to; the largest is also where texts are truncated and
            must not exceed the bundle's max length.
        fp16: TensorRT precision FP16 (``--backend tensorrt``: the accelerator's flag; ``tensorrt-plan``:
            the bundle's ``model.fp16.onnx``, since strongly typed networks take precision from the graph).
        tokenizer_instances: Python-backend tokenizer instances (CPU processes).
        name: the ensemble's name; the parts are ``NAME_tokenizer`` and ``NAME_model``.
        engine_cache: where the server keeps TensorRT engines (on the server's file system).
        python_env: the Python environment the tokenizer's backend stub runs in (Triton's
            ``EXECUTION_ENV_PATH``: the absolute path of a venv/conda folder or conda-pack ``.tar.gz`` on the
            server); it needs numpy and tokenizers for the stub's Python (numpy < 2 for tritonserver 2.51's
            stub).  None: whatever environment the stub's embedded Python finds.

    Raises:
        ExportError, BundleError: bad arguments or bundle.  ValidationError: a rewritten graph disagrees
        with the bundle's.  TritonRepositoryError: the written repository fails its checks (every
        problem listed).  MissingDependencyError: tritonclient is not installed.
    """
    started = time.perf_counter()
    _check_options(backend, max_batch_size, tokenizer_instances, fp16, name, python_env)
    widths = parse_buckets(buckets)
    repo = Path(repo)
    check_output_folder(repo.absolute(), overwrite)
    model_config_pb2()  # the check at the end needs tritonclient: fail before any work
    plan, notes = _plan(bundle, backend, fp16, widths, max_batch_size, name)
    with staged_folder(repo, overwrite) as stage:
        model_dir = stage / plan.names["model"]
        _write_graph(model_dir, plan)
        warmups = _write_warmups(model_dir, plan)
        notes += _write_model_config(model_dir, plan, warmups, engine_cache, repo)
        _write_tokenizer(stage / plan.names["tokenizer"], plan, tokenizer_instances, python_env)
        _write_ensemble(stage / plan.names["ensemble"], plan)
        problems = check_repository(stage, allow_unbuilt_plans=True)
        if problems:
            raise TritonRepositoryError(format_problems(repo, problems), problems)
    return TritonExport(repo, plan.names, backend, widths, max_batch_size, time.perf_counter() - started, notes)


def _check_options(backend: str, max_batch_size: Any, tokenizer_instances: Any, fp16: bool, name: str,
                   python_env: str | None) -> None:
    """:class:`ExportError` on an option :func:`export_triton` cannot use (checked before any work)."""
    if backend not in BACKENDS:
        raise ExportError(f"unknown Triton backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ExportError(f"--max-batch-size must be a positive integer, got {max_batch_size!r}")
    if isinstance(tokenizer_instances, bool) or not isinstance(tokenizer_instances, int) or tokenizer_instances < 1:
        raise ExportError(f"--tokenizer-instances must be a positive integer, got {tokenizer_instances!r}")
    if fp16 and backend not in ("tensorrt", "tensorrt-plan"):
        raise ExportError("--fp16 sets TensorRT's precision: use it with --backend tensorrt or tensorrt-plan")
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ExportError(f"--name must be letters, digits, '_' or '-', got {name!r}")
    if python_env is not None and not python_env.startswith("/"):
        raise ExportError(f"--python-env must be an absolute path on the server, got {python_env!r} (an environment "
                          f"inside the model folder is named with $$TRITON_MODEL_DIRECTORY/...: edit config.pbtxt)")


@dataclass
class _Plan:
    """What a repository serves: the bundle, its graph before and after the rewrites, names and shapes."""

    source: Any  # the HashEE bundle
    backend: str
    fp16: bool
    names: dict[str, str]  # role (ensemble, tokenizer, model) -> model name
    widths: list[int]  # the buckets
    max_batch_size: int
    original: Any  # the bundle's ONNX graph
    serving: Any  # the graph the model runs: exit table embedded, int32 inputs for TensorRT
    pad_token: str | None
    pad_id: int

    @property
    def uses_tensorrt(self) -> bool:
        return self.backend in ("tensorrt", "tensorrt-plan")

    @property
    def index_dtype(self) -> np.dtype:
        return np.dtype("int32") if self.uses_tensorrt else np.dtype("int64")

    @property
    def index_type(self) -> str:
        return TYPE[self.index_dtype]

    @property
    def model_inputs(self) -> list[str]:
        return [i.name for i in self.serving.graph.input]

    @property
    def prefix(self) -> bool:
        """Whether the graph takes the prefix layout (sorted rows, ``position_ids``, ``exit_mask_l``)."""
        return is_prefix_graph(self.model_inputs)

    def input_dtype(self, name: str) -> np.dtype:
        """The dtype of a model input at the Triton boundary (a mask is bool, int32 with TensorRT)."""
        return self.index_dtype if mask_layer(name) is None or self.uses_tensorrt else np.dtype("bool")

    @property
    def input_types(self) -> dict[str, str]:
        """Model input -> Triton dtype, in the graph's order."""
        return {name: TYPE[self.input_dtype(name)] for name in self.model_inputs}

    @property
    def num_labels(self) -> int:
        return len(self.source.labels)


def _source_graph(bundle: str | Path, source: Any, backend: str, fp16: bool, widths: list[int]
                  ) -> tuple[Path, list[str]]:
    """The bundle's graph file to serve (checked against the backend and buckets) and notes for the user."""
    if source.kind != "hashee":
        raise ExportError(f"{bundle} is a {source.kind} bundle; export-triton serves HashEE bundles")
    if widths[-1] > source.max_length:
        raise ExportError(f"bucket {widths[-1]} exceeds the bundle's max length {source.max_length}; use smaller "
                          f"--buckets or re-export with a larger --max-length")
    notes = []
    if widths[-1] < source.max_length:
        notes.append(f"note: texts longer than {widths[-1]} tokens are truncated to the largest bucket "
                     f"(the bundle accepts {source.max_length})")
    target = source.meta.get("onnx", {}).get("target")
    if backend == "tensorrt-plan" and target != "tensorrt":
        raise ExportError(f"{bundle} was exported for {target}; a TensorRT plan is parsed whole by TensorRT: export "
                          f"with --target tensorrt (hashee export RUN -o DIR --target tensorrt)")
    model_file = source.model_file
    if backend == "tensorrt-plan" and fp16:
        if FP16_FILE not in source.meta.get("files", {}):
            raise ExportError(f"{bundle} has no {FP16_FILE}; strongly typed TensorRT plans take their precision "
                              f"from the graph: create it first with hashee convert {bundle}")
        model_file = source.path / FP16_FILE
    if backend == "tensorrt" and target != "tensorrt":
        notes.append(f"note: the bundle was exported for {target}; its com.microsoft attention runs outside TensorRT "
                     f"(export with --target tensorrt for a graph TensorRT takes whole)")
    if fp16 and backend == "tensorrt":
        notes.append("note: precision_mode FP16 relies on the TensorRT accelerator's precision flag; TensorRT 11 "
                     "builds strongly typed networks, convert the ONNX to FP16 first there")
    return model_file, notes


def _plan(bundle: str | Path, backend: str, fp16: bool, widths: list[int], max_batch_size: int, name: str
          ) -> tuple[_Plan, list[str]]:
    """Open and check the bundle, load its graph and rewrite it for serving (nothing written yet)."""
    import onnx

    source = open_bundle(bundle)
    model_file, notes = _source_graph(bundle, source, backend, fp16, widths)
    original = onnx.load(str(model_file))
    _check_servable(bundle, [i.name for i in original.graph.input], source.num_layers)
    serving = original
    if MASKS in [i.name for i in original.graph.input]:
        serving = embed_exit_table(serving, source.exit_table, source.num_layers)
    if backend in ("tensorrt", "tensorrt-plan"):
        serving = int32_inputs(serving)
    pad_token = _special(read_tokenizer_config(source).get("pad_token"))
    pad_id = TextEncoder(source.tokenizer_dir, widths[-1], pad_token).pad_id
    names = {"ensemble": name, "tokenizer": f"{name}_tokenizer", "model": f"{name}_model"}
    return _Plan(source, backend, fp16, names, widths, max_batch_size, original, serving, pad_token, pad_id), notes


def _check_servable(bundle: str | Path, inputs: list[str], num_layers: int) -> None:
    """:class:`ExportError` when the tokenizer model cannot make every input of the bundle's graph."""
    makes = set(TOKEN_INPUTS) | {MASKS}
    if is_prefix_graph(inputs):
        makes |= set(mask_names(num_layers))
    elif "position_ids" in inputs or any(mask_layer(n) is not None for n in inputs):
        raise ExportError(f"{bundle}'s graph takes {', '.join(inputs)}: a prefix layout needs position_ids and "
                          f"exit_mask_1..exit_mask_{num_layers} together; re-export it (hashee export --layout prefix)")
    unknown = [n for n in inputs if n not in makes]
    if unknown:
        raise ExportError(f"{bundle}'s graph takes {', '.join(unknown)}, which the Triton tokenizer does not make "
                          f"(it makes {', '.join(TOKEN_INPUTS)}, exit masks); re-export it with hashee export")


def _write_graph(model_dir: Path, plan: _Plan) -> None:
    """Write the serving graph (and check a rewritten one against the bundle's own graph)."""
    source = plan.source
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "warmup").mkdir()
    graph_file = model_dir / (PLAN_ONNX if plan.backend == "tensorrt-plan" else "1/model.onnx")
    graph_file.parent.mkdir(parents=True, exist_ok=True)
    graph_file.write_bytes(plan.serving.SerializeToString())
    if plan.serving is not plan.original and plan.prefix:
        _check_prefix_rewrite(graph_file, plan)
    elif plan.serving is not plan.original:
        from transformers import AutoTokenizer

        hf_tokenizer = AutoTokenizer.from_pretrained(str(source.tokenizer_dir))
        check_embedded(graph_file, plan.original, source.exit_table, source.num_layers,
                       hf_tokenizer, min(source.max_length, plan.widths[-1]))


def model_arrays(plan: _Plan, texts: list[str], width: int) -> dict[str, np.ndarray]:
    """The model inputs for ``texts`` padded to bucket ``width``, as the tokenizer model makes them (packed or
    prefix layout: :func:`hashee.prefix.plan_prefix` with the tokenizer's bucket rule), at the boundary dtypes."""
    encoded = TextEncoder(plan.source.tokenizer_dir, width, plan.pad_token).encode(texts)
    ids, mask = pad_to(encoded.ids, width, plan.pad_id)
    types, _ = pad_to(encoded.types, width, 0)
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    if plan.prefix:
        uses_types = "token_type_ids" in plan.model_inputs
        exits = np.asarray(plan.source.exit_table, dtype=np.int64)[ids]
        arrays = plan_prefix(ids, mask, exits, plan.source.num_layers, types if uses_types else None, bucket=True,
                             max_length=width, pad_id=plan.pad_id).feed()
    return {name: arrays[name].astype(plan.input_dtype(name)) for name in plan.model_inputs}


def _check_prefix_rewrite(graph_file: Path, plan: _Plan, tolerance: float = 1e-5) -> None:
    """The rewritten prefix graph (int32 inputs) against the bundle's graph on sample texts (:class:`ValidationError`)."""
    from hashee.exporter.validate import ort_session

    rewritten, original = ort_session(graph_file), ort_session(plan.original.SerializeToString())
    width = plan.widths[-1]
    feed = model_arrays(plan, sample_texts(8) + ["", " ".join(sample_texts(16))], width)
    want = {i.name: np.bool_ if i.type == "tensor(bool)" else np.int64 for i in original.get_inputs()}
    got = rewritten.run(["logits"], feed)[0]
    reference = original.run(["logits"], {k: v.astype(want[k]) for k, v in feed.items()})[0]
    diff = float(np.abs(got - reference).max())
    if not diff <= tolerance:
        raise ValidationError(f"the int32-input prefix graph disagrees with the bundle's graph by {diff:.3g} "
                              f"(beyond {tolerance:g})")


def _write_warmups(model_dir: Path, plan: _Plan) -> list[str]:
    """Warm-up inputs at the smallest bucket (batch 1) and the largest (full batch); their config entries."""
    text = " ".join(sample_texts(16))
    warmups = []
    types = plan.input_types
    for sample, width, batch in (("smallest_bucket", plan.widths[0], 1),
                                 ("largest_bucket", plan.widths[-1], plan.max_batch_size)):
        inputs = {}
        for tensor, array in model_arrays(plan, [text], width).items():
            file = f"{tensor}_{width}"
            (model_dir / "warmup" / file).write_bytes(array[0].tobytes())
            inputs[tensor] = (file, types[tensor], int(array.shape[1]))
        warmups.append(_warmup(sample, batch, inputs))
    return warmups


def _write_model_config(model_dir: Path, plan: _Plan, warmups: list[str], engine_cache: str, repo: Path
                        ) -> list[str]:
    """The model's ``config.pbtxt`` (and a plan model's build script); notes for the user."""
    model, inputs = plan.names["model"], plan.model_inputs
    if plan.backend == "tensorrt-plan":
        spec = plan_spec(model, inputs, plan.widths, plan.max_batch_size, "fp16" if plan.fp16 else "fp32",
                         num_layers=plan.source.num_layers)
        write_plan_script(model_dir / PLAN_SCRIPT, spec)
        (model_dir / "config.pbtxt").write_text(plan_config(model, plan.max_batch_size, inputs, plan.num_labels,
                                                            warmups, len(spec["profiles"])))
        return [f"note: {model}/1/model.plan is not built yet: on the serving GPU, with the TensorRT its "
                f"tritonserver uses, run python3 {repo / model / PLAN_SCRIPT} (plans only run on the compute "
                f"capability they were built for)"]
    accelerator = (_accelerator(inputs, plan.widths, plan.max_batch_size, plan.fp16, f"{engine_cache}/{model}",
                                plan.source.num_layers) if plan.backend == "tensorrt" else None)
    (model_dir / "config.pbtxt").write_text(model_config(model, plan.max_batch_size, plan.input_types,
                                                         plan.num_labels, warmups, accelerator))
    return []


def _write_tokenizer(tok_dir: Path, plan: _Plan, instances: int, python_env: str | None) -> None:
    """The Python-backend tokenizer model: its code, tokenizer.json, the exit table and its config."""
    source = plan.source
    (tok_dir / "1" / TOKENIZER_DIR).mkdir(parents=True)
    shutil.copyfile(TOKENIZER_SOURCE, tok_dir / "1" / "model.py")
    shutil.copyfile(source.tokenizer_dir / "tokenizer.json", tok_dir / "1" / TOKENIZER_DIR / "tokenizer.json")
    np.save(tok_dir / "1" / TABLE_FILE, np.asarray(source.exit_table, dtype=np.int16), allow_pickle=False)
    params = {"buckets": ",".join(map(str, plan.widths)), "max_length": str(plan.widths[-1]),
              "pad_id": str(plan.pad_id), "token_type_ids": "true" if "token_type_ids" in plan.model_inputs else "false",
              "index_dtype": plan.index_dtype.name, "tokenizer_file": "tokenizer/tokenizer.json",
              "exit_table_file": TABLE_FILE, "num_layers": str(source.num_layers)}
    if plan.prefix:
        write_prefix_module(tok_dir / "1" / PREFIX_FILE)
        params.update({"layout": "prefix", "prefix_plan_file": PREFIX_FILE,
                       "mask_dtype": plan.input_dtype(mask_names(1)[0]).name})
    if python_env is not None:
        params["EXECUTION_ENV_PATH"] = python_env
    (tok_dir / "config.pbtxt").write_text(tokenizer_config(plan.names["tokenizer"], plan.max_batch_size, instances,
                                                           plan.input_types, params))


def write_prefix_module(path: Path) -> None:
    """Copy :mod:`hashee.prefix` to ``path`` with its one hashee import replaced, so the tokenizer model runs
    the runtime's own sort and masks in a Python backend that has only numpy and tokenizers."""
    source = PREFIX_SOURCE.read_text(encoding="utf-8")
    if source.count(PREFIX_IMPORT) != 1:
        raise ExportError(f"{PREFIX_SOURCE} lost its line {PREFIX_IMPORT.strip()!r}: the tokenizer's copy cannot be made")
    header = "# copied from hashee/prefix.py by hashee export-triton; runs without hashee (only numpy)\n"
    path.write_text(header + source.replace(PREFIX_IMPORT, "InputError = ValueError  # hashee.errors.InputError "
                                                            "is a ValueError too\n"), encoding="utf-8")


def _write_ensemble(ens_dir: Path, plan: _Plan) -> None:
    """The ensemble model: TEXT (+ TEXT_PAIR) through the tokenizer into the model."""
    (ens_dir / "1").mkdir(parents=True)
    (ens_dir / "config.pbtxt").write_text(ensemble_config(plan.names["ensemble"], plan.max_batch_size,
                                                          plan.names["tokenizer"], plan.names["model"],
                                                          plan.model_inputs, plan.num_labels))


def validate_triton(repo: str | Path, allow_unbuilt_plans: bool = False,
                    warnings: list[str] | None = None) -> list[str]:
    """Every problem of a Triton model repository (see :mod:`hashee.serve.triton_check`); with
    ``allow_unbuilt_plans`` a ``tensorrt_plan`` model whose plan its build script has not yet built is a
    warning (appended to ``warnings``) instead of a problem."""
    return check_repository(repo, allow_unbuilt_plans=allow_unbuilt_plans, warnings=warnings)
