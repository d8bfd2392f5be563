#!/usr/bin/env bash
# README command 1: install, then run streamer on its embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --demo
export ARROW_DEFAULT_MEMORY_POOL="${ARROW_DEFAULT_MEMORY_POOL:-jemalloc}"
exec .venv/bin/streamer demo "$@"
