"""``results.md`` (laid out like the seed's Table 5) and the throughput plot of a ``hashee bench`` run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ORDER = ("torch-dense", "onnxruntime-dense", "onnxruntime-dense-int8", "tensorrt-dense", "tensorrt-dense-int8",
         "torch-hashee", "onnxruntime-hashee", "onnxruntime-hashee-int8", "tensorrt-hashee", "tensorrt-hashee-int8")


def _ordered(result: dict[str, Any]) -> list[dict[str, Any]]:
    def rank(record: dict[str, Any]) -> tuple[int, str]:
        base, _, variant = record["key"].partition(":")  # a compared bundle right after the main one
        return (ORDER.index(base) if base in ORDER else len(ORDER), variant)

    return sorted(result["backends"], key=rank)


RUNTIME_NAMES = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT"}


def _num(value: Any, fmt: str = "{:.1f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def main_table(result: dict[str, Any]) -> list[str]:
    sizes = [str(s) for s in result["batch_sizes"]]
    by_key = {r["key"]: r for r in result["backends"]}
    metric_name = "accuracy"
    for record in result["backends"]:
        if record.get("metric") and "accuracy" not in record["metric"]:
            metric_name = "pearson/spearman"
    lines = [
        f"| model | backend | {metric_name} | FLOPs speed-up | " + " | ".join(f"samples/s @ batch {s}" for s in sizes)
        + " | peak RSS (MiB) |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in sizes) + " | --- |",
    ]
    for record in _ordered(result):
        model = "HashEE" if record["model"] == "hashee" else "dense"
        precision = record.get("precision", "fp32")
        if record.get("variant"):
            model += f" ({record['variant']})"
        if precision != "fp32":
            model += f" {precision}"
        backend = RUNTIME_NAMES.get(record["runtime"], record["runtime"])
        if record["status"] != "ok":
            lines.append(f"| {model} | {backend} | skipped: {record['reason']} |" + " |" * (len(sizes) + 2))
            continue
        metric = record.get("metric")
        metric_text = _num(metric["main"], "{:.4f}") if metric else "n/a"
        flops = result["flops"]["speedup"] if record["model"] == "hashee" else 1.0
        over_runtime = record["model"] == "hashee" or record.get("precision", "fp32") != "fp32"
        base = by_key.get(f"{record['runtime']}-dense") if over_runtime else by_key.get("torch-dense")
        cells = []
        for size in sizes:
            value = record["results"][size]["samples_per_s"]
            if base and base.get("status") == "ok":
                cells.append(f"{value:.1f} ({value / base['results'][size]['samples_per_s']:.2f}x)")
            else:
                cells.append(f"{value:.1f}")
        peak = record.get("memory", {}).get("peak_mib")
        lines.append(f"| {model} | {backend} | {metric_text} | {flops:.2f}x | " + " | ".join(cells)
                     + f" | {_num(peak, '{:.0f}')} |")
    return lines


def precision_table(result: dict[str, Any]) -> list[str]:
    """ONNX Runtime CPU: dense fp32, dense int8, HashEE fp32, HashEE int8 with ratios over dense fp32."""
    by_key = {r["key"]: r for r in result["backends"]}
    keys = ("onnxruntime-dense", "onnxruntime-dense-int8", "onnxruntime-hashee", "onnxruntime-hashee-int8")
    if not any(k.endswith("-int8") and k in by_key for k in keys):
        return []
    sizes = [str(s) for s in result["batch_sizes"]]
    base = by_key.get("onnxruntime-dense")
    lines = ["## ONNX Runtime: fp32 and dynamic int8, dense and HashEE (x over dense fp32)", "",
             "int8 = `hashee quantize` (dynamic: int8 weights per output channel, activations quantised at run "
             "time); dense rows run the fused Optimum graph. Label agreement: with the same model's fp32 rows.", "",
             "| model | accuracy | label agreement with fp32 | " + " | ".join(f"batch {s}" for s in sizes) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in sizes) + " |"]
    names = {"onnxruntime-dense": "dense fp32", "onnxruntime-dense-int8": "dense int8",
             "onnxruntime-hashee": "HashEE fp32", "onnxruntime-hashee-int8": "HashEE int8"}
    for record in _ordered(result):  # compared bundles (--compare), right after the main ones
        main_key, _, variant = record["key"].partition(":")
        if variant and main_key in ("onnxruntime-hashee", "onnxruntime-hashee-int8"):
            names[record["key"]] = f"HashEE ({variant}) {record.get('precision', 'fp32')}"
            keys += (record["key"],)
    for key in keys:
        record = by_key.get(key)
        if record is None:
            continue
        if record["status"] != "ok":
            lines.append(f"| {names[key]} | skipped: {record['reason']} |" + " |" * (len(sizes) + 1))
            continue
        metric = record.get("metric")
        agree = record.get("parity_fp32", {}).get("label_agreement")
        cells = []
        for size in sizes:
            value = record["results"][size]["samples_per_s"]
            ok = base and base.get("status") == "ok"
            cells.append(f"{value:.1f} ({value / base['results'][size]['samples_per_s']:.2f}x)" if ok else f"{value:.1f}")
        lines.append(f"| {names[key]} | {_num(metric and metric['main'], '{:.4f}')} | "
                     f"{_num(agree, '{:.2%}') if key.endswith('-int8') else '-'} | " + " | ".join(cells) + " |")
    ratios = [result["speedups"][s].get("onnxruntime_hashee_int8_over_dense_int8") for s in sizes]
    if any(r is not None for r in ratios):
        lines.append("")
        lines.append("HashEE int8 over dense int8: " + ", ".join(f"batch {s} {_num(r, '{:.2f}x')}"
                                                               for s, r in zip(sizes, ratios)) + ".")
    return lines + [""]


def timed_text(result: dict[str, Any]) -> str:
    """How many examples each batch size's timed pass covers."""
    record = next((r for r in result["backends"] if r["status"] == "ok"), None)
    if record is None:
        return "none measured"
    counts = {s: record["results"][str(s)].get("examples", result["data"]["examples"]) for s in result["batch_sizes"]}
    if all(c == result["data"]["examples"] for c in counts.values()):
        return f"all {result['data']['examples']}"
    return ", ".join(f"batch {s}: {c}" for s, c in counts.items()) + f" of {result['data']['examples']}, at most " \
        f"{result.get('max_batches')} batches evenly spread over the length-sorted plan"


def write_markdown(result: dict[str, Any], path: Path) -> Path:
    data, flops = result["data"], result["flops"]
    tokens = data["tokens"]
    table = result.get("exit_table", {})
    sizes = [str(s) for s in result["batch_sizes"]]
    lines = [
        f"# hashee bench: {data['description']}",
        "",
        f"{data['examples']} examples{' (sentence pairs)' if data['pairs'] else ''}, {tokens['mean']:.1f} tokens on "
        f"average ({tokens['min']}-{tokens['max']}); HashEE bundle `{result['bundle']}` (exit table "
        f"{table.get('kind', '?')}, L={table.get('num_layers', '?')}); dense baseline: {result['dense']['origin']}; "
        f"ONNX Runtime dense graph: {result['dense']['onnxruntime_graph']}.",
        "",
        f"samples/s: examples per pass ({timed_text(result)}) / median of {result['repeats']} timed passes after "
        f"{result['warmup']} warm-up pass, backends in turn; x: over the dense model on the same runtime (dense "
        f"rows: over PyTorch dense). {result['timing']}.",
        "",
        *main_table(result),
        "",
        *precision_table(result),
        "## Realised vs ideal speed-up (HashEE over dense, same runtime)",
        "",
        f"Analytic FLOPs on this data: dense {flops['dense_gflops']:.1f} GFLOPs, HashEE {flops['hashee_gflops']:.1f} "
        f"GFLOPs (ideal {flops['speedup']:.2f}x); active tokens per layer: "
        + ", ".join(f"{a:.0%}" for a in flops["active_fraction"]) + ".",
        "",
        "| batch | FLOPs ideal | ONNX Runtime realised | realised / ideal | PyTorch realised | realised / ideal "
        "| ORT HashEE / PyTorch HashEE | ORT HashEE / PyTorch dense | padding waste |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for size in sizes:
        row = result["speedups"][size]
        ort, pt = row.get("onnxruntime"), row.get("torch")
        lines.append(
            f"| {size} | {row['flops_ideal']:.2f}x | {_num(ort and ort['realised'], '{:.2f}x')} | "
            f"{_num(ort and ort['realised_over_ideal'], '{:.2f}')} | {_num(pt and pt['realised'], '{:.2f}x')} | "
            f"{_num(pt and pt['realised_over_ideal'], '{:.2f}')} | "
            f"{_num(row.get('onnxruntime_hashee_over_torch_hashee'), '{:.2f}x')} | "
            f"{_num(row.get('onnxruntime_hashee_over_torch_dense'), '{:.2f}x')} | "
            f"{result['padding'][size]['waste']:.1%} |")
    lines += ["", "## Latency per batch (ms, p50 / p99) and memory", "",
              "| backend | device | " + " | ".join(f"batch {s}" for s in sizes) + " | RSS loaded / peak (MiB) |",
              "| --- | --- | " + " | ".join("---" for _ in sizes) + " | --- |"]
    for record in _ordered(result):
        if record["status"] != "ok":
            continue
        cells = [f"{record['results'][s]['latency_ms']['p50']:.1f} / {record['results'][s]['latency_ms']['p99']:.1f}"
                 for s in sizes]
        memory = record.get("memory", {})
        lines.append(f"| {record['label']} | {record.get('device', '?')} | " + " | ".join(cells)
                     + f" | {_num(memory.get('loaded_mib'), '{:.0f}')} / {_num(memory.get('peak_mib'), '{:.0f}')} |")
    lines += ["", "## Parity (same batches; PyTorch against ONNX Runtime, every other backend against PyTorch)", "",
              "| backend | reference | max abs logit difference | label agreement | metric |",
              "| --- | --- | --- | --- | --- |"]
    for record in _ordered(result):
        if record["status"] != "ok":
            continue
        par = record.get("parity", {})
        metric = record.get("metric")
        metric_text = ", ".join(f"{k} {v:.4f}" for k, v in metric.items() if k != "main") if metric else \
            record.get("metric_note", "n/a")
        if par.get("reference"):
            lines.append(f"| {record['label']} | {par['reference']} | {par['max_abs_diff']:.2e} | "
                         f"{_num(par.get('label_agreement'), '{:.2%}')} | {metric_text} |")
        else:
            lines.append(f"| {record['label']} | {par.get('reason', 'n/a')} | n/a | n/a | {metric_text} |")
    skipped = [r for r in _ordered(result) if r["status"] != "ok"]
    if skipped:
        lines += ["", "## Skipped", ""] + [f"- {r['label']}: {r['reason']}" for r in skipped]
    machine = result["machine"]
    lines += ["", f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, load average "
              f"{', '.join(f'{x:.1f}' for x in machine['load_average'] or [])} at the end; "
              + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()) + f"; run took {result['seconds']} s.",
              ""]
    if result.get("command"):
        lines += ["```", result["command"], "```", ""]
    path.write_text("\n".join(lines))
    return path


def write_plot(result: dict[str, Any], path: Path) -> Path:
    """Throughput (samples/s, log scale) against batch size, one line per backend (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    sizes = result["batch_sizes"]
    colours = {"torch": "tab:orange", "onnxruntime": "tab:blue", "tensorrt": "tab:green"}
    for record in _ordered(result):
        if record["status"] != "ok":
            continue
        values = [record["results"][str(s)]["samples_per_s"] for s in sizes]
        int8 = record.get("precision", "fp32") != "fp32"
        ax.plot(sizes, values, marker="s" if int8 else "o", color=colours.get(record["runtime"], "black"),
                alpha=0.6 if int8 else 1.0,
                linestyle="-" if record["model"] == "hashee" else "--", label=record["label"])
    skipped = [r["label"] for r in result["backends"] if r["status"] != "ok"]
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(s) for s in sizes])
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples/s (median)")
    ax.set_title(f"{result['data']['description']}: throughput"
                 + (f"\n(skipped: {', '.join(skipped)})" if skipped else ""), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no backend could run here", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
