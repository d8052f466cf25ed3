#!/usr/bin/env bash
# On the GPU machine: run the GPU tests and the benchmarks, logs and tables under $OUT (default ./gpu_out).
# Usage (from the project root, with diffusers and flash-attn-4 importable):
#     bash scripts/gpu_check.sh                    # every stage: info tests attention e2e
#     bash scripts/gpu_check.sh tests attention    # some stages; also: e2e, compile, bsa
# Each stage has its own time limit, so one slow or failing stage does not hide the others' results.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1  # flash-attn-4 kernels compiled once per machine, reused by stages
export DRAFTATTN_REQUIRE_BACKENDS=${DRAFTATTN_REQUIRE_BACKENDS:-fa4,flex}  # GPU tests fail (not skip) without them
stages=${*:-info tests attention e2e}

run() {  # run <name> <seconds> <command...>: output to $OUT/<name>.log, status line at the end
  local name=$1 limit=$2; shift 2
  echo "=== $name: $* (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0))s"
  tail -n 25 "$OUT/$name.log"
}

for stage in $stages; do
  case $stage in
    info) run info 120 python3 -m draftattention_diffusers.info ;;
    tests) run gpu_tests 240 python3 -m pytest tests/gpu -q -rs --durations=12 -s ;;
    attention) run attention 300 python3 scripts/benchmark_attention.py --memory --out "$OUT/attention.md" ;;
    e2e) run e2e 570 python3 scripts/benchmark_e2e.py --out "$OUT/e2e.md" ;;  # one untimed warm-up per setting
    compile) run compile 300 python3 scripts/benchmark_e2e.py --models wan1.3b-480p --sparsities 0.9 \
               --skip-cudnn --compile regional --reps 3 --out "$OUT/compile.md" ;;
    bsa) run bsa 240 bash -c "python3 -m pytest tests/gpu -q -rs -s -k bsa && python3 scripts/benchmark_attention.py \
               --backends bsa fa4 --shapes wan1.3b-480p hunyuan-720p --out $OUT/attention_bsa.md" ;;
    *) echo "unknown stage $stage (expected info, tests, attention, e2e, compile, bsa)"; exit 2 ;;
  esac
done
