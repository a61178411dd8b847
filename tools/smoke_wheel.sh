#!/usr/bin/env bash
# Install a built wheel into a fresh venv on a PATH with no compiler, and smoke-check it.
#
#   tools/smoke_wheel.sh dist/actspace-*-cp311-*manylinux*.whl [TORCH_WHEEL]
#
# TORCH_WHEEL defaults to /opt/wheels/torch-2.13.0+cpu-cp311-...whl (the local file); the
# other dependencies come from the configured package index. The check itself
# (tools/smoke_check.py) runs with PATH = the venv's bin/ alone (python, pip and the console
# scripts of the installed packages; a venv's python must be called from there to find its
# pyvenv.cfg), an empty environment (no CC/CXX), from a directory outside the checkout, so
# nothing can be compiled and nothing from the checkout can be imported.
set -euo pipefail
WHEEL=$(readlink -f "${1:?usage: smoke_wheel.sh WHEEL [TORCH_WHEEL]}")
HERE=$(cd "$(dirname "$0")" && pwd)
tag=$(basename "$WHEEL" | cut -d- -f3)                       # cp311
pyver="${tag:2:1}.${tag:3}"                                   # 3.11
PY=$(ls -d "${PYENV_ROOT:-/root/.pyenv}/versions/$pyver".*/bin/python | sort -V | tail -1)
TORCH_WHEEL=${2:-$(ls /opt/wheels/torch-2.13.0*-"$tag"-"$tag"-*.whl | head -1)}
version=$(basename "$WHEEL" | cut -d- -f2)

WORK=$(mktemp -d /tmp/actspace-smoke.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m venv "$WORK/venv"
V="$WORK/venv/bin"
"$V/pip" install -q "$TORCH_WHEEL"
"$V/pip" install -q "$WHEEL"

for cc in cc gcc g++ c++ clang nvcc cmake ld; do
  if env -i PATH="$V" /bin/bash -c "command -v $cc" >/dev/null 2>&1; then
    echo "smoke_wheel: $cc is reachable on the stripped PATH" >&2; exit 1
  fi
done
cp "$HERE/smoke_check.py" "$WORK/smoke_check.py"
cd "$WORK"
env -i HOME="$WORK" PATH="$V" OMP_NUM_THREADS=2 python smoke_check.py "$version"
