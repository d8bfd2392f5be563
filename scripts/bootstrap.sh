#!/usr/bin/env bash
# Shared set-up for the README's two commands: a project virtualenv with
# streamer installed (editable), and, with --test, the test tools plus the
# Debian packages the integration tests talk to (Prometheus, Alertmanager,
# PostgreSQL for the fleet tests).
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

if [ "$want_test" = 1 ]; then
  missing=()
  for bin in prometheus promtool prometheus-alertmanager amtool; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
  done
  packages=()
  [ "${#missing[@]}" -gt 0 ] && packages+=(prometheus prometheus-alertmanager)
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || { packages+=(postgresql); missing+=(initdb); }
  if [ "${#packages[@]}" -gt 0 ]; then
    echo "installing Debian packages ${packages[*]} (missing: ${missing[*]})" >&2
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.installed-$( (cat pyproject.toml; echo "$want_test") | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  if [ "$want_test" = 1 ]; then
    .venv/bin/python -m pip install -q -e ".[test]"
  else
    .venv/bin/python -m pip install -q -e .
  fi
  touch "$stamp"
fi
