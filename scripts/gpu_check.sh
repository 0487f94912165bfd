#!/usr/bin/env bash
# The GPU check (issue 8): r1flow's SFT and GRPO trainers in bf16 on one CUDA device, printing
# tokens/s, peak memory and MFU (benchmarks/gpu_check.py), in well under 5 minutes on an H100/H200.
#
# It is meant for a GPU machine that has torch, transformers and accelerate but no network (and no
# vLLM). What r1flow needs beyond those comes as wheels in .gpu-wheels/, fetched beforehand on a
# machine with network and carried along with the repository:
#   scripts/gpu_check.sh --download     # with network: pure-Python wheels + compiled ones for CPython 3.10-3.13
#   scripts/gpu_check.sh [ARGS]         # on the GPU: install them into .gpu-deps/ if needed, then run
# ARGS go to benchmarks/gpu_check.py (--steps N, --sizes tiny,0.5b-shape, --device cuda:1).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu-wheels
DEPS=.gpu-deps
# r1flow's own imports on the trainers' path that a bare torch + transformers image lacks (versions: constraints.txt)
PKGS="pydantic pydantic-core annotated-types typing-inspection math-verify latex2sympy2-extended antlr4-python3-runtime pyyaml"
PYTHON=${PYTHON:-python3}

if [ "${1:-}" = "--download" ]; then
  for version in 3.10 3.11 3.12 3.13; do
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download -q --only-binary=:all: --no-deps --python-version "$version" \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -c constraints.txt -d "$WHEELS" $PKGS
  done
  ls "$WHEELS"
  exit 0
fi

if ! "$PYTHON" -c "import pydantic, math_verify, yaml" 2>/dev/null; then
  [ -d "$WHEELS" ] || { echo "gpu_check: r1flow's dependencies are missing and $WHEELS/ is not here (run --download where there is network)" >&2; exit 2; }
  # shellcheck disable=SC2086
  "$PYTHON" -m pip install -q --no-index --no-deps --find-links "$WHEELS" --target "$DEPS" $PKGS
fi
PYTHONPATH="$DEPS:.${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 exec timeout 290 "$PYTHON" -m benchmarks.gpu_check "$@"
