#!/usr/bin/env bash
# Shared set-up for the README's two commands: a project virtualenv with
# streamer installed (editable), and, with --test, the test tools plus the
# Debian packages the integration tests talk to (Prometheus, Alertmanager,
# PostgreSQL for the fleet tests, libfaketime for replicas with skewed clocks);
# --bench: --test plus the bench extra (polars, duckdb: bench/run.py's peers,
# e.g. the `--baseline` row "decode + count / polars streaming").
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
want_demo=0
want_bench=0
[ "${1:-}" = "--test" ] && want_test=1
[ "${1:-}" = "--bench" ] && want_test=1 && want_bench=1
[ "${1:-}" = "--demo" ] && want_demo=1

if [ "$want_test" = 1 ]; then
  missing=()
  for bin in prometheus promtool prometheus-alertmanager amtool; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
  done
  packages=()
  [ "${#missing[@]}" -gt 0 ] && packages+=(prometheus prometheus-alertmanager)
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || { packages+=(postgresql); missing+=(initdb); }
  # libfaketime: the fleet test that runs replicas with skewed wall clocks
  command -v faketime >/dev/null 2>&1 || { packages+=(faketime); missing+=(faketime); }
  if [ "${#packages[@]}" -gt 0 ]; then
    echo "installing Debian packages ${packages[*]} (missing: ${missing[*]})" >&2
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  fi
fi

# A C compiler builds the native tokenizer (streamer/decode/_scan.c); without one the install
# still works, on Arrow's CSV reader alone (about half the decode speed).
if ! command -v cc >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "installing a C compiler (gcc) for streamer's native tokenizer" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.installed-$( (cat pyproject.toml constraints.txt streamer/decode/_scan.c; echo "$want_test$want_demo$want_bench") | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  target="."
  [ "$want_demo" = 1 ] && target=".[demo]"
  [ "$want_test" = 1 ] && target=".[test]"  # includes the demo extra: tests run moto as a server
  [ "$want_bench" = 1 ] && target=".[test,bench]"
  # constraints.txt pins every package to versions tested together (reproducible installs);
  # pip's and setuptools' chatter goes to a log, shown only if the install fails.
  if ! { .venv/bin/python -m pip install -q --upgrade pip \
         && .venv/bin/python -m pip install -q -c constraints.txt -e "$target"; } >.venv/install.log 2>&1; then
    cat .venv/install.log >&2
    echo "installing streamer failed (log above, also in .venv/install.log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
