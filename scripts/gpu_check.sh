#!/usr/bin/env bash
# The GPU check (issue 8), benchmarks/gpu_check.py: a random-weight model of the REAL Qwen2.5-Math-1.5B
# config and tokenizer through r1flow's SFT and GRPO trainers in bf16 on one CUDA device (the loss falls
# on a fixed batch; with beta > 0 and two minibatches, KL > 0 and the ratio != 1), then tokens/s, peak
# memory and MFU at the tiny and 0.5B shapes; exits non-zero when a check fails. About 5 minutes on an
# H100/H200 at most (GPU_CHECK_TIMEOUT, default 290 s).
#
# It is meant for a GPU machine that has torch, transformers and accelerate but no network, no vLLM and
# no copy of shared/. What it needs beyond those is prepared beforehand and carried with the repository:
#   scripts/gpu_check.sh --download   # with network: r1flow's pure-Python wheels + compiled ones for
#                                     # CPython 3.10-3.13 into .gpu-wheels/, and --copy-hub
#   scripts/gpu_check.sh --copy-hub [SRC]  # no network needed: the config and tokenizer files of SRC
#                                     # (default ../shared/data/hub/Qwen--Qwen2.5-Math-1.5B) into
#                                     # .gpu-deps/hub/Qwen--Qwen2.5-Math-1.5B/ (16 MB, no weights)
#   scripts/gpu_check.sh [ARGS]       # on the GPU: install the wheels into .gpu-deps/ if needed, then run
# .gpu-wheels/ and .gpu-deps/ are git-ignored: carry both to the GPU machine explicitly (with the device
# tool: carry [".gpu-wheels", ".gpu-deps"]). The config folder is found as benchmarks/gpu_check.py says:
# --hub-dir PATH, else ../shared/data/hub/Qwen--Qwen2.5-Math-1.5B, else .gpu-deps/hub/Qwen--Qwen2.5-Math-1.5B.
# ARGS go to benchmarks/gpu_check.py: --hub-dir PATH, --shrink, --no-real, --sizes tiny,0.5b-shape (''
# for none), --steps N, --quick, --device cuda:1. The CPU dry run (a few minutes on 2 cores):
#   PYTHON=.venv/bin/python scripts/gpu_check.sh --device cpu --quick --shrink
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu-wheels
DEPS=.gpu-deps
HUB_NAME=Qwen--Qwen2.5-Math-1.5B
# what AutoConfig / AutoTokenizer.from_pretrained read, and the license
HUB_FILES="config.json generation_config.json tokenizer.json tokenizer_config.json vocab.json merges.txt"
HUB_FILES="$HUB_FILES LICENSE"
# r1flow's own imports on the trainers' path that a bare torch + transformers image lacks
# (versions: constraints.txt)
PKGS="pydantic pydantic-core annotated-types typing-inspection math-verify latex2sympy2-extended"
PKGS="$PKGS antlr4-python3-runtime pyyaml"
PYTHON=${PYTHON:-python3}

copy_hub() {
  local src=${1:-../shared/data/hub/$HUB_NAME} dest=$DEPS/hub/$HUB_NAME
  [ -f "$src/config.json" ] || { echo "gpu_check: no config.json in $src" >&2; exit 2; }
  mkdir -p "$dest"
  for name in $HUB_FILES; do
    [ ! -f "$src/$name" ] || cp -f "$src/$name" "$dest/"
  done
  chmod -R u+w "$dest"  # shared/ is read-only; a later copy must be able to overwrite these
  ls -l "$dest"
}

case "${1:-}" in
  --copy-hub)
    copy_hub "${2:-}"
    exit 0
    ;;
  --download)
    copy_hub
    for version in 3.10 3.11 3.12 3.13; do
      # shellcheck disable=SC2086
      "$PYTHON" -m pip download -q --only-binary=:all: --no-deps --python-version "$version" \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -c constraints.txt -d "$WHEELS" $PKGS
    done
    ls "$WHEELS"
    exit 0
    ;;
esac

if ! PYTHONPATH="$DEPS" "$PYTHON" -c "import pydantic, math_verify, yaml" 2>/dev/null; then
  if [ ! -d "$WHEELS" ]; then
    echo "gpu_check: r1flow's dependencies are missing and $WHEELS/ is not here" \
      "(run --download where there is network)" >&2
    exit 2
  fi
  # shellcheck disable=SC2086
  "$PYTHON" -m pip install -q --no-index --no-deps --find-links "$WHEELS" --target "$DEPS" $PKGS
fi
PYTHONPATH="$DEPS:.${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
  exec timeout "${GPU_CHECK_TIMEOUT:-290}" "$PYTHON" -m benchmarks.gpu_check "$@"
