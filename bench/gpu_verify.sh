#!/usr/bin/env bash
# GPU verification in two device calls, sized to the 15-minute device budget (DEVELOPERS.md:
# at most 10 minutes a call, 1-2 minutes of machine start). Results land in $OUT.
#
#   call 1 (<= 8 min):  OUT=$OUT bash bench/gpu_verify.sh 1
#       preflight, sm_90 build into the cached build/gpu (seconds on 16 cores), the CUDA
#       tests with our kernels forced, compute-sanitizer memcheck over them (torch's caching
#       allocator off, so an overrun is not hidden inside a pooled segment), the CUDA
#       sections of the topk_encode and sparse_decode benchmarks.
#   call 2 (<= 3 min, right after, the machine still warm):  OUT=$OUT bash bench/gpu_verify.sh 2
#       racecheck and synccheck on the merge, moments and latent-fold kernels (exact test
#       ids), the stats benchmark's CUDA section.
#   bash bench/gpu_verify.sh dry   prints the plan and checks what runs without a GPU here.
#   SKIP="memcheck bench_topk_encode" leaves those stages out (a re-check after a fix).
#
# Every stage runs under its own `timeout`; the exit status is the first failing stage's.
# The test files come from csrc/families.txt (tests/ops/test_<family>.py).
set -uo pipefail
cd "$(dirname "$0")/.."
CALL=${1:-1}
case "$CALL" in 1|2|dry) ;; *) echo "usage: bash bench/gpu_verify.sh 1|2|dry"; exit 2 ;; esac
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
ARCHS=${ACTSPACE_CUDA_ARCHS:-90-real}
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export ACTSPACE_CUDA_KERNELS=1   # route CUDA tensors to our kernels (not yet verified)
FAMILY_TESTS=()
while read -r f; do
  case "$f" in ''|\#*) continue ;; esac
  FAMILY_TESTS+=("tests/ops/test_$f.py")
done < csrc/families.txt
KERNEL_TESTS=("${FAMILY_TESTS[@]}")  # memcheck: our kernels (torch's own under it are slow)
FAMILY_TESTS+=(tests/decompose/test_snmf.py)  # not a kernel family, but it has GPU tests
# the GPU tests: the cuda_target fixture's "cuda" instances and the other gpu-marked tests
SELECT="(cuda or gpu) and not cuda_emulated"
# racecheck/synccheck: the shared-memory and warp-synchronous kernels, one small case each
RACE_IDS=(
  "tests/ops/test_topk_encode.py::test_cuda_matches_reference[cuda-64-dtype0]"
  "tests/ops/test_topk_encode.py::test_cuda_unaligned_tiles_take_the_scalar_loads[cuda]"
  "tests/ops/test_stats.py::test_cuda_moments_kernel[cuda-dtype0]"
  "tests/ops/test_stats.py::test_cuda_latent_fold_bitwise_equals_cpu[cuda-40-dtype0]"
  "tests/ops/test_sparse_decode.py::test_cuda_unaligned_rows_and_autograd[cuda]"
)
rc_all=0
stage() {  # stage NAME SECONDS CMD...: run under timeout, log to $OUT/NAME.txt, keep the rc
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  case " ${SKIP:-} " in *" $name "*) echo "== $name skipped (SKIP)"; return 0 ;; esac
  if [ "$CALL" = dry ]; then echo "[dry] $name (timeout ${secs}s): $*"; return 0; fi
  echo "== $name (timeout ${secs}s)"
  # through bash so that the shell functions below (exported) can be staged too
  timeout "$secs" bash -c '"$@"' "$name" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "   $name rc=$rc in $((SECONDS - t0)) s"
  tail -4 "$OUT/$name.txt" | sed 's/^/   /'
  [ $rc -ne 0 ] && [ $rc_all -eq 0 ] && rc_all=$rc
  return $rc
}

build() {
  cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DACTSPACE_CUDA=ON \
    -DACTSPACE_CUDA_ARCHS="$ARCHS" -DPython_EXECUTABLE="$(command -v $PY)" \
    -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" \
  && ninja -C build/gpu -j "$(nproc)" \
  && cp build/gpu/_core*.so python/actspace/ \
  && $PY -c "import actspace, json; i = actspace.build_info(); print(json.dumps(i)); \
assert i['cuda'], 'not a CUDA build'"
}

sanitize() {  # sanitize TOOL PYTEST-ARGS...
  local tool=$1; shift
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 9 \
    $PY -m pytest -q -x -p no:cacheprovider "$@"
}

export -f build sanitize
export ARCHS PY
case "$CALL" in
  1|dry)
    stage preflight 30 bash -c "nvidia-smi; $PY -c 'import torch, pybind11, cmake, ninja, pytest; \
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'; \
command -v compute-sanitizer nvcc"
    stage build 120 build || { echo "build failed: nothing else can run"; exit 1; }
    stage gpu_tests 120 $PY -m pytest -q -rs -p no:cacheprovider -k "$SELECT" "${FAMILY_TESTS[@]}"
    stage memcheck 150 sanitize memcheck -k "$SELECT" "${KERNEL_TESTS[@]}"
    stage bench_topk_encode 50 $PY bench/bench_topk_encode.py --cuda-only --repeats 3 \
      --out "$OUT/bench_topk_encode.json"
    stage bench_sparse_decode 40 $PY bench/bench_sparse_decode.py --cuda-only --reps 5 \
      --out "$OUT/bench_sparse_decode.json"
    ;;&
  2|dry)
    stage racecheck 70 sanitize racecheck "${RACE_IDS[@]}"
    stage synccheck 50 sanitize synccheck "${RACE_IDS[@]}"
    stage bench_stats 30 $PY bench/bench_stats.py --cuda-only --quick --out "$OUT/bench_stats.json"
    ;;
esac
if [ "$CALL" = dry ]; then
  # what can be checked without a GPU: the test ids named above exist
  $PY -m pytest -q --collect-only -p no:cacheprovider "${RACE_IDS[@]}" > /dev/null \
    || { echo "[dry] a racecheck test id does not exist"; exit 1; }
  echo "[dry] racecheck ids collected; stage budget: call 1 = 30+120+120+150+50+40 = 510 s max," \
       "call 2 = 70+50+30 = 150 s max"
fi
exit $rc_all
