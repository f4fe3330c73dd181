"""Session.predict on a bundle over a data file: agreement with PyTorch, accuracy, throughput, peak RSS.

    python benchmarks/runtime_predict.py BUNDLE --data dev.tsv [--reference RUN_DIR] [--dense-bundle DIR]

* agreement: labels of ``Session.predict`` vs the PyTorch reference (``hashee.modeling`` on the run the
  bundle came from, Hugging Face tokenizer with truncation), and their max |logit difference|;
* accuracy of the bundle's labels;
* throughput (texts/s) of ``predict`` at ``--batch-size`` with and without cost-aware batching, the
  median of ``--repeats`` alternating runs (the machine is shared: medians, not best-of);
* peak resident memory (VmHWM, MiB) of a fresh process that loads the bundle and predicts the whole
  file, next to a fresh process running a plain ``onnxruntime.InferenceSession`` on the dense export
  over the same batches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# VmHWM (this process's peak resident set, reset at exec) rather than ru_maxrss, which a child
# started from a large parent inherits across fork + exec.
HWM = """
def HWM():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

CHILD_SESSION = HWM + """
import sys, json
from hashee.runtime import Session
from hashee.data import load_examples
ex = load_examples(sys.argv[2])
s = Session.load(sys.argv[1], backend="onnxruntime", device="cpu")
loaded = HWM()
s.predict(ex.inputs(), batch_size=32)
print(json.dumps({"loaded": loaded, "peak": HWM()}))
"""

CHILD_PLAIN_ORT = HWM + """
import sys, json
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
from hashee.data import load_examples
ex = load_examples(sys.argv[2])
tok = Tokenizer.from_file(sys.argv[1] + "/tokenizer/tokenizer.json")
tok.enable_truncation(512)
tok.enable_padding(pad_id=0)
opts = ort.SessionOptions(); opts.log_severity_level = 3
sess = ort.InferenceSession(sys.argv[1] + "/model.onnx", opts, providers=["CPUExecutionProvider"])
loaded = HWM()
names = [i.name for i in sess.get_inputs()]
texts = ex.inputs()
for start in range(0, len(texts), 32):
    enc = tok.encode_batch(texts[start:start + 32])
    feed = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
    sess.run(None, {k: v for k, v in feed.items() if k in names})
print(json.dumps({"loaded": loaded, "peak": HWM()}))
"""


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def reference_logits(run_dir: str, inputs: list, max_length: int):
    import numpy as np
    import torch

    from hashee.evaluation import load_run

    model, tokenizer, _ = load_run(run_dir, device="cpu")
    out = []
    with torch.inference_mode():
        for start in range(0, len(inputs), 64):
            chunk = inputs[start:start + 64]
            args = (list(zip(*chunk)) if isinstance(chunk[0], tuple) else [chunk])
            batch = tokenizer(*args, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            out.append(model(**batch).logits.float().numpy())
    return np.concatenate(out)


def main() -> None:
    import numpy as np

    from hashee.data import load_examples
    from hashee.runtime import Session

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--data", required=True)
    parser.add_argument("--reference", help="run folder (default: the one hashee.json names)")
    parser.add_argument("--dense-bundle", help="dense export for the memory comparison")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--memory-only", action="store_true", help="only the peak-RSS comparison")
    args = parser.parse_args()

    if args.memory_only:
        result = {"rss_session_mib": child(CHILD_SESSION, args.bundle, args.data)}
        if args.dense_bundle:
            result["rss_plain_ort_dense_mib"] = child(CHILD_PLAIN_ORT, args.dense_bundle, args.data)
            result["rss_session_on_dense_mib"] = child(CHILD_SESSION, args.dense_bundle, args.data)
        print(json.dumps(result, indent=2))
        return
    examples = load_examples(args.data)
    inputs = examples.inputs()
    session = Session.load(args.bundle, backend="onnxruntime", device="cpu", threads=args.threads)
    result: dict = {"bundle": args.bundle, "data": args.data, "examples": len(inputs), "backend": session.backend,
                    "batch_size": args.batch_size}
    logits = session.predict_logits(inputs, batch_size=args.batch_size)
    predicted = logits.argmax(1)
    reference = args.reference or session.bundle.meta.get("source", {}).get("run_dir")
    ref = reference_logits(reference, inputs, session.max_length)
    result["label_agreement"] = float((predicted == ref.argmax(1)).mean())
    result["max_abs_logit_diff"] = float(np.abs(logits - ref).max())
    if examples.has_labels:
        label2id = {name: i for i, name in enumerate(session.labels)}
        result["accuracy"] = float((predicted == examples.label_ids(label2id)).mean())
    times: dict[str, list[float]] = {"cost_aware": [], "input_order": []}
    for _ in range(args.repeats):
        for name, flag in (("cost_aware", True), ("input_order", False)):
            start = time.perf_counter()
            session.predict(inputs, batch_size=args.batch_size, cost_aware=flag)
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        result[f"texts_per_s_{name}"] = len(inputs) / statistics.median(values)
        result[f"seconds_{name}"] = [round(v, 3) for v in values]
    result["cost_aware_gain"] = result["texts_per_s_cost_aware"] / result["texts_per_s_input_order"]
    session.close()
    result["rss_session_mib"] = child(CHILD_SESSION, args.bundle, args.data)
    if args.dense_bundle:
        result["rss_plain_ort_dense_mib"] = child(CHILD_PLAIN_ORT, args.dense_bundle, args.data)
        result["rss_ratio_peak"] = result["rss_session_mib"]["peak"] / result["rss_plain_ort_dense_mib"]["peak"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
