#!/usr/bin/env bash
# The model test (tests/model) with random seeds for N minutes: prints every failing seed.
#
#   scripts/model.sh --minutes 60
#
# Each round draws a seed and runs every world with new schedules (MODEL_PROFILE=long). A failing
# round prints its seed and keeps its log; the same seed reproduces it:
#   MODEL_PROFILE=long .venv/bin/python -m pytest -p no:cacheprovider tests/model/test_model.py tests/model/test_fleet.py --hypothesis-seed=SEED
# Hypothesis's example database (.hypothesis/model, not in git) keeps what was found: the next run
# (and that command) tries it first.
set -uo pipefail
cd "$(dirname "$0")/.."
minutes=10
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    *) echo "usage: $0 [--minutes N]" >&2; exit 2 ;;
  esac
done
mkdir -p .hypothesis/model
end=$(( $(date +%s) + minutes * 60 ))
failed=0
rounds=0
while [ "$(date +%s)" -lt "$end" ]; do
  seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
  left=$(( end - $(date +%s) ))
  log=.hypothesis/model/seed-$seed.log
  MODEL_PROFILE=long MODEL_EXAMPLES="${MODEL_EXAMPLES:-4}" timeout --signal=INT "$(( left > 60 ? left : 60 ))" \
    nice -n 10 .venv/bin/python -m pytest -q -p no:cacheprovider -p no:logging tests/model/test_model.py tests/model/test_fleet.py \
    --hypothesis-seed="$seed" > "$log" 2>&1
  rc=$?
  rounds=$(( rounds + 1 ))
  if [ $rc -eq 0 ]; then
    rm -f "$log"
    echo "seed $seed: passed"
  elif [ $rc -eq 124 ] || grep -q "KeyboardInterrupt" "$log"; then
    rm -f "$log"
    echo "seed $seed: cut short by the time limit"
  else
    failed=1
    echo "FAILING SEED $seed (log: $log)"
    grep -E "AssertionError|state\.[a-z_]+\(" "$log" | grep -v "monotone()\|safe()" | head -40
  fi
done
echo "$rounds round(s) in $minutes minute(s); $([ $failed -eq 0 ] && echo 'nothing found' || echo 'failures above')"
exit $failed
