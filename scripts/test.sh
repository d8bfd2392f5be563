#!/usr/bin/env bash
# README command 2: install everything, then lint, type-check, build the docs and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --test
.venv/bin/ruff check streamer tests bench
.venv/bin/mypy
# The docs site (mkdocs.yml, docs/): a broken link, a missing page or anchor fails here. Built into a
# temporary directory, never committed; the generated references are checked by the suite.
site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$site"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
