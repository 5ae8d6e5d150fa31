#!/usr/bin/env bash
# The project's test command: every notebook through nbdev_test, then pytest on tests/. Prints one closing
# line "N passed, M failed" and exits non-zero if anything failed.
#   bash tools/test.sh          the everyday pass: notebooks without their `#| slow` cells, pytest without the
#                               tests marked slow (whole training runs, kill tests, the quick demo)
#   bash tools/test.sh --slow   the rest: the notebooks that have slow cells, run with them, and the slow tests
#   bash tools/test.sh --all    both in one pass (what .ci/run runs, as two passes)
# Options (environment): LLMBIND_TEST_JOBS (parallel notebooks / pytest workers, default 2),
# LLMBIND_NB_TIMEOUT (seconds per notebook, default 900).
set -u
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 DS_ACCELERATOR=cpu
# DeepSpeed's shared-memory CPU all-reduce op: use it only if already compiled (compiling costs minutes)
export LLMBIND_DS_SHM=${LLMBIND_DS_SHM:-cached}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
export MPLBACKEND=Agg PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
mode=fast
case "${1:-}" in
  "") ;;
  --slow) mode=slow ;;
  --all) mode=all ;;
  *) echo "usage: bash tools/test.sh [--slow | --all]"; exit 2 ;;
esac
if [ "$mode" = fast ]; then flags=""; markers="not slow"; else flags=slow; fi
[ "$mode" = slow ] && markers="slow"
[ "$mode" = all ] && markers=""
jobs=${LLMBIND_TEST_JOBS:-2}
nb_timeout=${LLMBIND_NB_TIMEOUT:-900}
logdir=$(mktemp -d)

run_nb() {  # one notebook -> a result line in $logdir
  nb=$1; name=$(basename "$nb" .ipynb); start=$(date +%s)
  if timeout "$nb_timeout" nbdev_test --path "$nb" ${flags:+--flags "$flags"} > "$logdir/$name.log" 2>&1 \
     && grep -q "Success" "$logdir/$name.log"; then st=PASS; else st=FAIL; fi
  echo "$st $name $(( $(date +%s) - start ))s" | tee "$logdir/$name.result"
}
export -f run_nb; export logdir flags nb_timeout

if [ "$mode" = slow ]; then nbs=$(grep -l '#| slow' nbs/*.ipynb | sort); else nbs=$(ls nbs/*.ipynb | sort); fi
echo "== $mode pass: notebooks (flags: ${flags:-none}, $jobs at a time) =="
echo "$nbs" | xargs -P "$jobs" -I{} bash -c 'run_nb {}'
nb_pass=$(cat "$logdir"/*.result | grep -c '^PASS' || true)
nb_fail=$(cat "$logdir"/*.result | grep -c '^FAIL' || true)
for f in $(grep -l '^FAIL' "$logdir"/*.result 2>/dev/null); do
  n=$(basename "$f" .result); echo "---- $n failed; last lines of its log:"; tail -40 "$logdir/$n.log"
done

echo "== pytest tests/ =="
py_pass=0; py_fail=0
if ls tests/test_*.py >/dev/null 2>&1; then
  python -m pytest -q -p no:cacheprovider -n "$jobs" --dist loadfile ${markers:+-m "$markers"} tests 2>&1 | tee "$logdir/pytest.log"
  summary=$(tail -n 3 "$logdir/pytest.log")
  py_pass=$(echo "$summary" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' | tail -1); py_pass=${py_pass:-0}
  py_fail=0; for n in $(echo "$summary" | grep -oE '[0-9]+ (failed|error|errors)' | grep -oE '^[0-9]+'); do py_fail=$((py_fail + n)); done
  if [ "$py_pass" = 0 ] && [ "$py_fail" = 0 ] && ! grep -q "no tests ran" "$logdir/pytest.log"; then py_fail=1; fi
else
  echo "(no test files)"
fi

passed=$((nb_pass + py_pass)); failed=$((nb_fail + py_fail))
echo "notebooks: $nb_pass passed, $nb_fail failed; pytest: $py_pass passed, $py_fail failed"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
