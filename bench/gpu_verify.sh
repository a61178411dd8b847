#!/usr/bin/env bash
# GPU verification in one device call (see bench/RESULTS.md, "GPU verification"):
# build for the GPU's architecture, run every CUDA test with our kernels forced, a
# compute-sanitizer memcheck over them, then the CUDA sections of the kernel benchmarks.
# Everything lands in $OUT (default bench/out/gpu); the exit status is the tests'.
#
#     OUT=$OUT ACTSPACE_CUDA_ARCHS=90-real bash bench/gpu_verify.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
export ACTSPACE_CUDA=ON ACTSPACE_CUDA_ARCHS=${ACTSPACE_CUDA_ARCHS:-90-real}
CUDA_TESTS=(tests/test_topk_encode.py tests/test_sparse_decode.py tests/test_stats_ops.py
            tests/test_snmf.py)
SELECT="cuda or gpu"

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python -c "import torch; print(torch.__version__, torch.version.cuda)" > "$OUT/torch.txt"
echo "== build ($ACTSPACE_CUDA_ARCHS)"
if ! pip install --no-build-isolation --no-deps -q . > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; exit 1
fi
python -c "import actspace, json; print(json.dumps(actspace.build_info()))" \
  | tee "$OUT/build_info.json"

echo "== CUDA tests (kernels forced)"
ACTSPACE_CUDA_KERNELS=1 python -m pytest -q -rs -p no:cacheprovider -k "$SELECT" \
  "${CUDA_TESTS[@]}" 2>&1 | tee "$OUT/gpu_tests.txt"
tests_rc=${PIPESTATUS[0]}

echo "== compute-sanitizer memcheck"
ACTSPACE_CUDA_KERNELS=1 compute-sanitizer --tool memcheck --error-exitcode 9 \
  python -m pytest -q -x -p no:cacheprovider -k "$SELECT" "${CUDA_TESTS[@]}" \
  > "$OUT/memcheck.txt" 2>&1
echo "memcheck rc=$?" | tee -a "$OUT/memcheck.txt"
grep -E "ERROR SUMMARY|passed|failed" "$OUT/memcheck.txt" | tail -3

echo "== compute-sanitizer racecheck (first dtype of each test only: racecheck is slow)"
ACTSPACE_CUDA_KERNELS=1 compute-sanitizer --tool racecheck --error-exitcode 9 \
  python -m pytest -q -x -p no:cacheprovider -k "cuda and (dtype0 or options or unaligned)" \
  tests/test_topk_encode.py tests/test_sparse_decode.py tests/test_stats_ops.py \
  > "$OUT/racecheck.txt" 2>&1
echo "racecheck rc=$?" | tee -a "$OUT/racecheck.txt"
grep -E "RACECHECK SUMMARY|ERROR SUMMARY|passed|failed" "$OUT/racecheck.txt" | tail -3

echo "== benchmarks"
for b in topk_encode sparse_decode stats; do
  timeout 300 python "bench/bench_$b.py" --out "$OUT/bench_$b.json" > "$OUT/bench_$b.txt" 2>&1
  echo "bench_$b rc=$?"; grep -iE "cuda|ratio|ours" "$OUT/bench_$b.txt" | head -12
done
exit "$tests_rc"
