#!/usr/bin/env bash
# On a machine with 2 GPUs (nvidia-h100-x2): draft attention under Ulysses context parallelism (NCCL).
#   1. tests/gpu/test_parallel_gpu.py: 2 ranks vs 1 GPU on small Wan / HunyuanVideo transformers (masks, output)
#   2. scripts/benchmark_e2e_multigpu.py: Wan2.1 14B 720p forward, 1 GPU vs 2 GPUs, dense vs draft 0.9
# Logs, JSON and markdown under $OUT (default ./gpu_out); a short summary is printed last.
# Usage (project root, after the two-call install of ../shared/gpu/README.md has made diffusers and flash-attn-4
# importable):
#     eval "$(bash .device/partB/install.sh)" && bash scripts/gpu_parallel_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1  # no NVLink multicast on these machines
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1  # flash-attn-4 kernels compiled once, reused by the benchmark
export DRAFTATTN_PARALLEL_RESULTS=$OUT/parallel_tests.json

nvidia-smi -L | tee "$OUT/gpus.txt"
t0=$SECONDS
timeout 240 python3 -m pytest tests/gpu/test_parallel_gpu.py -q -rs -s -p no:cacheprovider \
  > "$OUT/parallel_tests.log" 2>&1
tests_rc=$?
echo "=== tests: exit $tests_rc after $((SECONDS - t0))s"
t0=$SECONDS
timeout 330 python3 scripts/benchmark_e2e_multigpu.py --models wan14b-720p --gpus 2 --sparsities 0.9 \
  --out "$OUT/e2e_multigpu.md" > "$OUT/e2e_multigpu.log" 2>&1
bench_rc=$?
echo "=== benchmark: exit $bench_rc after $((SECONDS - t0))s"

echo
echo "=== summary (tests exit $tests_rc, benchmark exit $bench_rc; logs in $OUT)"
grep -E "passed|failed|error" "$OUT/parallel_tests.log" | tail -n 3
python3 - "$OUT/parallel_tests.json" <<'EOF'
import json, sys
try:
    data = json.load(open(sys.argv[1]))
except (OSError, ValueError) as e:
    sys.exit(f"no test results: {e}")
print(f"2 x {data['device']}, torch {data['torch']}")
print("| case | rank | rel err vs 1 GPU | min tile agreement | mean sparsity 2 GPUs / 1 GPU |")
print("|---|---|---|---|---|")
for rank, res in enumerate(data["ranks"]):
    for name, r in res.items():
        if "error" in r:
            print(f"| {name} | {rank} | ERROR: {r['error'].strip().splitlines()[-1][:150]} | | |")
            continue
        ms = r["mean_sparsity"]
        print(f"| {name} | {rank} | {r['rel_err']:.1e} | {r['tile_agreement_min']} | {ms[0]} / {ms[1]} |")
EOF
[ -f "$OUT/e2e_multigpu.md" ] && cat "$OUT/e2e_multigpu.md" || tail -n 30 "$OUT/e2e_multigpu.log"
