#!/usr/bin/env bash
# The CUDA kernels without a GPU: build the emulated core (the CUDA sources compiled for the
# host against csrc/common/cuda_emulate.h) under AddressSanitizer+UBSan and under
# ThreadSanitizer, prove each sanitizer reports from inside a kernel launched by Python, then
# run the CUDA tests of every family on it (-k cuda_emulated). Called by .ci/run; runnable
# alone from the repository root (needs the normal core built and the CUDA headers).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
JOBS=${JOBS:-2}
# the normal core must be importable (the kernel test modules skip without it)
$PY -c "from actspace.ops._common import core; assert core(), 'actspace._core is not built'"
FAMILY_TESTS=()
while read -r f; do
  case "$f" in ''|\#*) continue ;; esac
  FAMILY_TESTS+=("tests/ops/test_$f.py")
done < csrc/families.txt

run_sanitized() {  # run_sanitized asan|tsan CMD... : the Python process with the runtime preloaded
  # (libstdc++ preloaded too: the python binary does not link it, and the sanitizer runtime
  # must find the real __cxa_throw when it starts, or torch's first C++ exception aborts)
  local kind=$1; shift
  local cxx; cxx="$(gcc -print-file-name=libstdc++.so)"
  # reports go to $REPORTS.<pid> (pytest captures fd 2, and a halting sanitizer kills the
  # process before pytest could print it); shown by show_reports
  if [ "$kind" = asan ]; then
    LD_PRELOAD="$(gcc -print-file-name=libasan.so) $cxx" \
    ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:log_path=$REPORTS" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$REPORTS" \
      "$@"
  else
    # torch's CPU ops on one thread: its OpenMP team is uninstrumented (false reports);
    # ASLR off: gcc 12's TSan refuses the high-entropy mmap layout of newer kernels
    OMP_NUM_THREADS=1 LD_PRELOAD="$(gcc -print-file-name=libtsan.so) $cxx" \
    TSAN_OPTIONS="halt_on_error=1:exitcode=66:report_signal_unsafe=0:log_path=$REPORTS:suppressions=$PWD/.ci/tsan.supp" \
      setarch "$(uname -m)" -R "$@"
  fi
}

show_reports() {
  local f
  for f in "$REPORTS".*; do [ -e "$f" ] && { echo "--- $f"; head -80 "$f"; }; done
  return 0
}

for san in address thread; do
  kind=$([ $san = address ] && echo asan || echo tsan)
  dir=build/emu-$san
  echo "== emulated CUDA core, $kind: build"
  start=$SECONDS
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DACTSPACE_CUDA_EMULATE=ON \
    -DACTSPACE_SANITIZE=$san -DPython_EXECUTABLE="$(command -v $PY)" \
    -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" > "$dir.configure.log" 2>&1 \
    || { tail -30 "$dir.configure.log"; exit 1; }
  ninja -C "$dir" -j "$JOBS" > "$dir.build.log" 2>&1 || { tail -40 "$dir.build.log"; exit 1; }
  echo "   built in $((SECONDS - start)) s"
  export ACTSPACE_CUDA_EMULATED_CORE="$PWD/$dir"
  REPORTS="$PWD/$dir.report"
  rm -f "$REPORTS".*

  echo "== emulated CUDA core, $kind: the sanitizer reports from a kernel (self-test)"
  want=$([ $kind = asan ] && echo "AddressSanitizer: stack-buffer-overflow|AddressSanitizer: heap-buffer-overflow" \
         || echo "ThreadSanitizer: data race")
  which=$([ $kind = asan ] && echo tail || echo race)
  set +e
  run_sanitized $kind $PY -c "from actspace.ops._common import emulated_core as e; \
e()._selftest_broken_kernel('$which')" > "$dir.selftest.log" 2>&1
  rc=$?
  set -e
  if [ $rc -eq 0 ] || ! cat "$REPORTS".* 2>/dev/null | grep -qE "$want"; then
    echo "   FAILED: the $which kernel was not reported (rc=$rc)"
    tail -30 "$dir.selftest.log"; show_reports; exit 1
  fi
  echo "   reported as expected (rc=$rc): $(cat "$REPORTS".* | grep -oE "$want" | head -1)"
  rm -f "$REPORTS".*

  echo "== emulated CUDA core, $kind: the CUDA tests of ${FAMILY_TESTS[*]}"
  start=$SECONDS
  set +e
  ACTSPACE_REQUIRE_EMULATED=1 run_sanitized $kind $PY -m pytest -q -p no:cacheprovider \
    -k cuda_emulated "${FAMILY_TESTS[@]}"
  rc=$?
  set -e
  if [ $rc -ne 0 ] || ls "$REPORTS".* > /dev/null 2>&1; then
    echo "   FAILED under $kind (rc=$rc)"; show_reports; exit 1
  fi
  echo "   tests in $((SECONDS - start)) s"
done
