"""Triton Python-backend tokenizer of a hashee model repository (copied as ``<tokenizer>/1/model.py``).

Written by ``hashee export-triton``; standalone on purpose: the Triton server's Python stub needs only
``numpy`` and ``tokenizers`` (the Rust Hugging Face tokenizer), not hashee.  The stub ignores
``PYTHONPATH``: it imports from the environment named by the config's ``EXECUTION_ENV_PATH`` (``hashee
export-triton --python-env``) or from the one its embedded Python finds on its own, and that
environment must suit the stub (tritonserver 2.51's needs numpy < 2; a warning is logged otherwise).

Per request: decode ``TEXT`` (and the optional ``TEXT_PAIR``) [batch, 1] strings, tokenise them with the
bundle's ``tokenizer.json`` (special tokens added, truncated longest-first to the largest bucket), pad
every row on the right to the **smallest bucket that holds the request's longest item** (Triton's
dynamic batcher only batches requests whose shapes match, so few distinct widths keep batches full),
and return ``input_ids``, ``attention_mask`` (and ``token_type_ids``) of that width.  It also reports
custom metrics: the mean exit layer of the real tokens served (gauge, over the model's lifetime) and
the running totals it is computed from (counters), so a dashboard sees how much early exit saves.

The same tokenisation and bucketing as ``hashee.runtime`` (``TextEncoder`` and
``batching.bucket_width``); tests check the two agree.

**Prefix-layout bundles** (``hashee export --layout prefix``; config parameter ``layout: prefix``): the
model graph takes each row sorted by exit layer, ``position_ids`` and ``exit_mask_1 .. exit_mask_L``
``[batch, W_l]`` (:mod:`hashee.prefix`).  The sort and the masks come from ``plan_prefix`` of a copy
of ``hashee/prefix.py`` that export-triton ships next to this file (``prefix_plan_file``; its one
``hashee`` import replaced, so the rule lives in one place and runs without hashee).  ``W_l`` is a
*shape*, and Triton's dynamic batcher only stacks requests whose shapes match (a batched model call
never mixes widths), so the widths are chosen to let requests batch: all requests of one ``execute``
call (the tokenizer's own dynamic batch) that share a sequence bucket are planned together, so they
get the same ``W_l`` (the widest row's), rounded up to a multiple of 8 (the runtime's bucket rule,
``plan_prefix(bucket=True, pad_rows=False)`` at the request's bucket width).  Rows of other requests only widen the
masks with false slots, which changes no answer; the model then batches them as one call.
"""

import importlib.util
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


NUMPY2_WARNING = (
    "hashee tokenizer: numpy %s in the Python backend's environment. Stubs built for numpy 1 (tritonserver 2.51, "
    "nvidia-pytriton 0.7.0) misread string inputs under numpy 2 and die on the first request ('unpack_from requires "
    "a buffer of at least ...', then \"Stub process ... is not healthy\"); if that happens, point EXECUTION_ENV_PATH "
    "at an environment with numpy<2 and tokenizers (hashee export-triton --python-env)")


def bucket_width(length, buckets):
    """The smallest bucket that holds ``length`` (the largest when none does)."""
    for width in buckets:
        if length <= width:
            return width
    return buckets[-1]


def load_module(path):
    """Import the Python file ``path`` under a name of its own (registered: dataclasses look it up)."""
    name = "hashee_tokenizer_" + "".join(c if c.isalnum() else "_" for c in os.path.abspath(path))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _decode(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    return str(value)


class TritonPythonModel:
    """Text in, bucket-padded token arrays out."""

    def initialize(self, args):
        from tokenizers import Tokenizer

        if int(np.__version__.split(".")[0]) >= 2 and hasattr(pb_utils, "Logger"):
            pb_utils.Logger.log_warn(NUMPY2_WARNING % np.__version__)
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], str(args["model_version"]))
        self.buckets = sorted(int(b) for b in params["buckets"].split(","))
        self.max_length = int(params["max_length"])
        self.pad_id = int(params["pad_id"])
        self.token_types = params.get("token_type_ids", "false") == "true"
        self.dtype = np.int32 if params.get("index_dtype", "int64") == "int32" else np.int64
        tokenizer = Tokenizer.from_file(os.path.join(folder, params.get("tokenizer_file", "tokenizer/tokenizer.json")))
        tokenizer.no_padding()
        tokenizer.enable_truncation(self.max_length, strategy="longest_first")
        self.tokenizer = tokenizer
        self.table = np.load(os.path.join(folder, params.get("exit_table_file", "exit_table.npy")),
                             allow_pickle=False).astype(np.int64)
        self.num_layers = int(params["num_layers"])
        self.prefix = None  # the shipped hashee/prefix.py for a prefix-layout model
        if params.get("layout", "packed") == "prefix":
            self.prefix = load_module(os.path.join(folder, params["prefix_plan_file"]))
            self.mask_dtype = np.bool_ if params.get("mask_dtype", "bool") == "bool" else self.dtype
        self.tokens_seen = 0
        self.layers_seen = 0
        labels = {"model": args.get("model_name", config.get("name", "tokenizer")),
                  "version": str(args.get("model_version", "1"))}
        self.mean_exit = self.tokens_total = self.layers_total = None
        if hasattr(pb_utils, "MetricFamily"):  # custom metrics: Triton 23.04 and later
            gauge = pb_utils.MetricFamily(name="hashee_mean_exit_layer",
                                          description="Mean exit layer of the real tokens tokenised so far",
                                          kind=pb_utils.MetricFamily.GAUGE)
            counter = pb_utils.MetricFamily(name="hashee_tokens_total", description="Real tokens tokenised",
                                            kind=pb_utils.MetricFamily.COUNTER)
            layers = pb_utils.MetricFamily(name="hashee_exit_layers_total",
                                           description="Sum of the exit layers of the real tokens tokenised",
                                           kind=pb_utils.MetricFamily.COUNTER)
            self.families = (gauge, counter, layers)  # keep the families alive with their metrics
            self.mean_exit = gauge.Metric(labels=labels)
            self.tokens_total = counter.Metric(labels=labels)
            self.layers_total = layers.Metric(labels=labels)

    def encode(self, texts, pairs=None):
        """``{name: array [len(texts), bucket]}`` for one request's texts (and pairs)."""
        inputs = list(zip(texts, pairs)) if pairs is not None else list(texts)
        encodings = self.tokenizer.encode_batch(inputs, add_special_tokens=True) if inputs else []
        rows = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        width = bucket_width(max((len(r) for r in rows), default=1), self.buckets)
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        mask = np.arange(width)[None, :] < lengths[:, None]
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        if rows:
            ids[mask] = np.concatenate(rows)
            types[mask] = np.concatenate([np.asarray(e.type_ids, dtype=np.int64) for e in encodings])
        out = {"input_ids": ids.astype(self.dtype), "attention_mask": mask.astype(self.dtype)}
        if self.token_types:
            out["token_type_ids"] = types.astype(self.dtype)
        self._count(ids[mask])
        return out

    def _count(self, real_ids):
        if real_ids.size == 0:
            return
        layers = int(self.table[real_ids].sum())
        self.tokens_seen += int(real_ids.size)
        self.layers_seen += layers
        if self.mean_exit is not None:
            self.tokens_total.increment(float(real_ids.size))
            self.layers_total.increment(float(layers))
            self.mean_exit.set(self.layers_seen / self.tokens_seen)

    @property
    def mean_exit_layer(self):
        return self.layers_seen / self.tokens_seen if self.tokens_seen else 0.0

    def read(self, request):
        """``(texts, pairs or None)`` of one request; ValueError when it is malformed."""
        text = pb_utils.get_input_tensor_by_name(request, "TEXT")
        if text is None:
            raise ValueError("the request has no TEXT input")
        texts = [_decode(v) for v in text.as_numpy().reshape(-1)]
        pair = pb_utils.get_input_tensor_by_name(request, "TEXT_PAIR")
        pairs = None
        if pair is not None:
            pairs = [_decode(v) for v in pair.as_numpy().reshape(-1)]
            if len(pairs) != len(texts):
                raise ValueError(f"TEXT has {len(texts)} items but TEXT_PAIR has {len(pairs)}")
        if self.prefix is not None and not texts:
            raise ValueError("the request has no texts")
        return texts, pairs

    def to_prefix(self, encoded):
        """Packed arrays by request -> the prefix layout's arrays by request (see the module doc): the
        requests of one bucket width are planned together, so they share every ``W_l``."""
        groups = {}
        for index, arrays in encoded.items():
            groups.setdefault(arrays["input_ids"].shape[1], []).append(index)
        out = {}
        for width, members in groups.items():
            joined = {name: np.concatenate([encoded[i][name] for i in members]) for name in encoded[members[0]]}
            ids = joined["input_ids"].astype(np.int64)
            plan = self.prefix.plan_prefix(ids, joined["attention_mask"], self.table[ids], self.num_layers,
                                           joined.get("token_type_ids"), bucket=True, max_length=width,
                                           pad_id=self.pad_id, pad_rows=False)
            feed = plan.feed()
            start = 0
            for index in members:
                stop = start + len(encoded[index]["input_ids"])
                out[index] = {name: np.ascontiguousarray(value[start:stop]).astype(
                    self.mask_dtype if value.dtype == np.bool_ else self.dtype) for name, value in feed.items()}
                start = stop
        return out

    def execute(self, requests):
        responses = [None] * len(requests)
        encoded = {}
        for index, request in enumerate(requests):
            try:
                encoded[index] = self.encode(*self.read(request))
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail the others
                responses[index] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
        if self.prefix is not None and encoded:
            try:
                encoded = self.to_prefix(encoded)
            except Exception as exc:  # noqa: BLE001 - reported on every request it concerns
                for index in encoded:
                    responses[index] = pb_utils.InferenceResponse(output_tensors=[],
                                                                  error=pb_utils.TritonError(str(exc)))
                encoded = {}
        for index, arrays in encoded.items():
            tensors = [pb_utils.Tensor(name, value) for name, value in arrays.items()]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self):
        self.tokenizer = None
