#!/usr/bin/env bash
# One GPU call per stage (each fits the ten-minute limit of a device call): the GPU tests, the attention call, and
# the real pipeline loop with caches and compile. Logs, JSON and markdown under $OUT (default ./gpu_out); the short
# tables are printed last. Run in the project root after the two-call install of ../shared/gpu/README.md:
#     eval "$(bash .device/partB/install.sh)" && bash scripts/gpu_speed_check.sh <stage>
# Stages:
#   tests        tests/gpu, then the attention call at 90% (Wan 14B / HunyuanVideo 720p), then Wan 1.3B 480p 50-step
#                loops with FirstBlockCache (alone and with draft attention)
#   wan14b       Wan2.1 14B 720p loop: default, flash-attn-4 dense, draft, MagCache, MagCache + draft
#   wan14b-compile  the same model with regional torch.compile: compile + draft, MagCache + compile (+ draft)
#   wan14b-fbcache  Wan 14B: First Block Cache on MagCache's published schedule with regional compile (MagCache's
#                own hooks are compiler-disabled in diffusers), with and without draft attention, and the default
#   families     one forward per setting (default, flash-attn-4 dense, draft 0.9) of the newer families at their
#                published sizes, one model per run: LTX-Video, CogVideoX 1.5, LTX-2, Wan VACE, SkyReels-V2
#   hunyuan      the HunyuanVideo 720p loop: default, flash-attn-4 dense, draft attention
#   kernel-rows  the attention call at 90% with topk (uneven rows) and row_topk (every row the same tile count), Wan 14B
#                and HunyuanVideo 720p: how much of the kernel's distance from its tile count is row imbalance
#   hunyuan-kernel  the attention call at HunyuanVideo 720p, then HunyuanVideo-1.5's forward per setting (its
#                default attention builds a [B, 1, S, S] mask, ~13 GB per call: minutes, not seconds)
#   fp8          tests/gpu, then Wan 14B 720p one forward per setting in bf16 and with float8 linears (torchao):
#                the difference from bf16 and CUDA kernel time by kind (issue 20 items 0 and 2)
#   wan22        Wan2.2 A14B 720p (two experts), 4-step distilled schedule, no CFG: default, flash-attn-4 dense,
#                draft; then one forward per setting of the 2B-13B new families (issue 19 rows)
#   wan22-stack  Wan2.2 A14B 720p 4-step loop through the one call (draft + compile, no cache), the same without
#                draft (flash-attn-4 dense and the model's own attention), and the default
#   wan14b-stack Wan 14B 720p loop through the one call, enable_fast_stack: default, stack and the same without
#                draft attention
#   wan14b-mild  the same with the opt-in milder warm-up (stack+mild), the default and flash-attn-4 dense
#   fp8-compile  float8 + regional compile at Wan 1.3B with recompiles, graph breaks and inductor autotuning logged
#                (its long warm-up was torchao's process-wide coordinate descent tuning, docs/benchmarks.md section 16)
#   wan14b-fp8   Wan 14B 720p loop: the one-call float8 stack (paper's dense warm-up) and the same without draft
#   wan22-only   Wan2.2 A14B 4-step alone (default, flash-attn-4 dense, draft), then float8 + compile's warm-up at
#                Wan 1.3B (how long it compiles)
#   hunyuan-stack  HunyuanVideo 720p loop through the one call: default, flash-attn-4 dense, stack, the same without
#                draft attention (465 s on an H100 without flash-attn-4 dense, docs/benchmarks.md section 14)
#   hunyuan-dense-stack  the HunyuanVideo stack beside the same stack dense on flash-attn-4 (the fastest dense stack)
#   families-14b one forward per setting of the 14B-class new families (ChronoEdit, AnyFlow, Wan-Animate, Helios,
#                Cosmos 2.5 14B)
#   families-more  the same for EasyAnimate, ConsisID, Kandinsky 5 Lite and Pro
#   cosmos-loop  the Cosmos-Predict2.5 2B pipeline loop with cache-dit's DBCache, with and without draft attention
#                (draft alone: docs/benchmarks.md section 15)
#   h200         (an H200: run with needs_h200) MiniMax-H3 33B and Kandinsky 6 48B forwards
#   gpu-tests    tests/gpu alone
#   e2e MODEL:SECONDS ...  one forward per setting of the named benchmark_e2e models, each with its own time limit
# Step counts are per setting (name@steps): each timed run holds every step class its 50-step estimate needs
# (dense, sparse, skipped by the cache); see scripts/benchmark_pipeline.py.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1
stage=${1:?usage: gpu_speed_check.sh gpu-tests|wan22-stack|e2e MODEL:SECONDS...|wan14b-mild|fp8-compile|wan14b-fp8|tests|fp8|wan22|wan22-only|wan14b-stack|hunyuan-stack|hunyuan-dense-stack|families-14b|families-more|cosmos-loop|h200|wan14b|wan14b-compile|wan14b-fbcache|families|hunyuan|hunyuan-kernel|kernel-rows}
nvidia-smi -L | tee "$OUT/gpus.txt"
pip list 2>/dev/null | grep -iE "^(torch|diffusers|flash-attn-4|triton) " | tee "$OUT/versions.txt"

run() {  # name, timeout seconds, command...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "=== $name: exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/stages.txt"
}

autotuning_lines() {  # log: how many inductor autotuning lines it holds (float8 stacks ask for cuBLAS only)
  echo "inductor autotuning lines (float8 matmuls should run cuBLAS only, FP8_INDUCTOR_OPTIONS): $(grep -c AUTOTUNE "$1")"
}

e2e_models() {  # model:seconds ...: one benchmark_e2e run per model, each with its own time limit
  local entry m
  for entry in "$@"; do
    m=${entry%%:*}
    run "e2e_$m" "${entry##*:}" python3 scripts/benchmark_e2e.py --models "$m" --sparsities 0.9 --reps 1 --warmup 1 \
      --skip-cudnn --out "$OUT/e2e_$m.md"
    grep -E "^\|" "$OUT/e2e_$m.md" 2>/dev/null | tail -n +3
  done
}

case $stage in
  gpu-tests)
    # 221 s before test_gpu_stack.py (docs/benchmarks.md section 15), which compiles three stacks per case with inductor
    run gpu_tests 480 python3 -m pytest tests/gpu -q -rs -p no:cacheprovider --durations=8 \
      --ignore=tests/gpu/test_parallel_gpu.py
    tail -16 "$OUT/gpu_tests.log"
    ;;
  e2e)
    shift
    e2e_models "$@"
    ;;
  tests)
    run gpu_tests 230 python3 -m pytest tests/gpu -q -x -rs -p no:cacheprovider --ignore=tests/gpu/test_parallel_gpu.py
    tail -5 "$OUT/gpu_tests.log"
    run attention 110 python3 scripts/benchmark_attention.py --shapes wan14b-720p hunyuan-720p --backends fa4 \
      --sparsities 0.9 --out "$OUT/attention.md"
    run pipeline_1.3b 230 python3 scripts/benchmark_pipeline.py --models wan1.3b-480p --steps 50 --no-decode \
      --warmup-steps 1 --budget-s 220 --settings default,draft,fbcache,fbcache+draft --out "$OUT/p13"
    cat "$OUT/attention.md" "$OUT/p13/benchmark_pipeline.md" 2>/dev/null
    ;;
  wan14b)
    run pipeline_14b 560 python3 scripts/benchmark_pipeline.py --models wan14b-720p --no-decode --warmup-steps 1 \
      --budget-s 550 --settings default@2,fa4-dense@2,draft@4,magcache@4,magcache+draft@8 --out "$OUT/p14"
    cat "$OUT/p14/benchmark_pipeline.md" 2>/dev/null
    ;;
  wan14b-compile)
    run pipeline_14b_compile 570 python3 scripts/benchmark_pipeline.py --models wan14b-720p --no-decode \
      --warmup-steps 1 --max-warmup-calls 1 --budget-s 560 \
      --settings compile+draft@4,magcache+draft+compile@8,magcache+compile@4 --out "$OUT/p14c"
    cat "$OUT/p14c/benchmark_pipeline.md" 2>/dev/null
    ;;
  wan14b-fbcache)
    run pipeline_14b_fbc 570 python3 scripts/benchmark_pipeline.py --models wan14b-720p --no-decode \
      --warmup-steps 1 --max-warmup-calls 2 --budget-s 0 \
      --settings default@1,fbcache-mag+draft+compile@8,fbcache-mag+compile@4 --out "$OUT/p14f"
    cat "$OUT/p14f/benchmark_pipeline.md" 2>/dev/null
    ;;
  fp8)
    run gpu_tests 230 python3 -m pytest tests/gpu -q -rs -p no:cacheprovider --ignore=tests/gpu/test_parallel_gpu.py
    tail -5 "$OUT/gpu_tests.log"
    run e2e_fp8 240 python3 scripts/benchmark_e2e.py --models wan14b-720p --sparsities 0.9 --reps 1 --warmup 1 \
      --skip-cudnn --fp8 --profile --out "$OUT/e2e_fp8.md"
    sed -n '/^| model/,$p' "$OUT/e2e_fp8.md" 2>/dev/null
    ;;
  wan22)
    run pipeline_wan22 260 python3 scripts/benchmark_pipeline.py --models wan22-a14b-720p --steps 4 --no-decode \
      --warmup-steps 1 --budget-s 250 --settings default,fa4-dense,draft --out "$OUT/p22"
    cat "$OUT/p22/benchmark_pipeline.md" 2>/dev/null
    e2e_models cosmos2.5-2b-704p:70 motif-video-2b-736p:90 framepack-720p:80 mochi-480p:90 allegro-720p:80
    ;;
  wan22-only)
    run pipeline_wan22 230 python3 scripts/benchmark_pipeline.py --models wan22-a14b-720p --steps 4 --no-decode \
      --warmup-steps 1 --budget-s 220 --settings default,fa4-dense,draft --out "$OUT/p22"
    cat "$OUT/p22/benchmark_pipeline.md" 2>/dev/null
    # how long float8 + regional compile takes to compile, and its step, at Wan 1.3B 480p
    run pipeline_fp8_compile 120 python3 scripts/benchmark_pipeline.py --models wan1.3b-480p --steps 4 --no-decode \
      --warmup-steps 1 --max-warmup-calls 2 --budget-s 0 --settings compile+draft,compile+draft+fp8 --out "$OUT/p13f"
    grep -E "warm-up|denoise|^--" "$OUT/p13f/benchmark_pipeline.log"
    cat "$OUT/p13f/benchmark_pipeline.md" 2>/dev/null
    ;;
  wan22-stack)
    # Wan2.2 A14B 4-step without CFG through the one call without a cache (a 4-step schedule leaves a cache nothing
    # to skip): enable_fast_stack(pipe) = draft attention (its default config) + regional compile on both experts,
    # beside the same without draft, dense on flash-attn-4 (the fastest dense path) and on the model's own attention,
    # and the default (flash-attn-4 dense without compile: docs/benchmarks.md section 14)
    run pipeline_wan22_stack 530 python3 scripts/benchmark_pipeline.py --models wan22-a14b-720p --steps 4 \
      --no-decode --warmup-steps 1 --max-warmup-calls 2 --budget-s 515 \
      --settings default,compile+draft,fa4-dense+compile,compile \
      --out "$OUT/p22s"
    cat "$OUT/p22s/benchmark_pipeline.md" 2>/dev/null
    ;;
  wan14b-stack)
    # the one-call stack in bf16 (with float8 linears: the wan14b-fp8 stage)
    run pipeline_14b_stack 570 python3 scripts/benchmark_pipeline.py --models wan14b-720p --no-decode \
      --warmup-steps 1 --max-warmup-calls 2 --budget-s 560 --settings default@1,stack@8,fbcache-mag+compile@4 \
      --out "$OUT/p14s"
    cat "$OUT/p14s/benchmark_pipeline.md" 2>/dev/null
    ;;
  wan14b-mild)
    run pipeline_14b_mild 570 python3 scripts/benchmark_pipeline.py --models wan14b-720p --no-decode \
      --warmup-steps 1 --max-warmup-calls 3 --budget-s 560 --settings default@1,stack+mild@8,fa4-dense@1 \
      --out "$OUT/p14m"
    cat "$OUT/p14m/benchmark_pipeline.md" 2>/dev/null
    ;;
  fp8-compile)
    # where float8 + regional compile's warm-up time goes, at Wan 1.3B 480p: recompiles and graph breaks logged
    TORCH_LOGS=recompiles,graph_breaks run pipeline_fp8_compile 300 python3 scripts/benchmark_pipeline.py \
      --models wan1.3b-480p --steps 4 --no-decode --warmup-steps 1 --max-warmup-calls 2 --budget-s 0 \
      --settings compile+draft+fp8,compile+fp8 --out "$OUT/p13f"
    grep -E "warm-up|denoise|^--|Recompil|recompil|graph break" "$OUT/pipeline_fp8_compile.log" | head -60
    autotuning_lines "$OUT/pipeline_fp8_compile.log"
    cat "$OUT/p13f/benchmark_pipeline.md" 2>/dev/null
    ;;
  wan14b-fp8)
    # the one-call float8 stack with the paper's dense warm-up and the same stack without draft attention in one run
    # (their "draft adds" went across two machines: docs/benchmarks.md sections 16-17; the milder warm-up and the
    # default: section 17); limits leave room for the install in the same call (a fresh machine)
    run pipeline_14b_fp8 530 python3 scripts/benchmark_pipeline.py --models wan14b-720p --no-decode \
      --warmup-steps 1 --max-warmup-calls 3 --budget-s 515 --settings stack+fp8@8,fbcache-mag+compile+fp8@4 \
      --out "$OUT/p14f8"
    grep -E "^--|warm-up|denoise:|torch.compile|skipped|Error" "$OUT/pipeline_14b_fp8.log" | head -40
    autotuning_lines "$OUT/pipeline_14b_fp8.log"
    cat "$OUT/p14f8/benchmark_pipeline.md" 2>/dev/null
    ;;
  hunyuan-stack)
    run pipeline_hunyuan_stack 570 python3 scripts/benchmark_pipeline.py --models hunyuan-720p --no-decode \
      --warmup-steps 1 --max-warmup-calls 2 --budget-s 560 --settings default@1,fa4-dense@1,stack@8,fbcache-mag+compile@4 \
      --out "$OUT/phs"
    cat "$OUT/phs/benchmark_pipeline.md" 2>/dev/null
    ;;
  hunyuan-dense-stack)
    # the HunyuanVideo stack's "draft adds" against the same stack dense on flash-attn-4 (section 17's 2.57x is
    # against the stack on HunyuanVideo's own masked SDPA, 1.5x slower than flash-attn-4 dense): the report takes
    # the faster of the two as "the same without draft"
    run pipeline_hunyuan_dense_stack 560 python3 scripts/benchmark_pipeline.py --models hunyuan-720p --no-decode \
      --warmup-steps 1 --max-warmup-calls 2 --budget-s 0 --settings stack@8,fbcache-mag+fa4-dense+compile@4 \
      --out "$OUT/phd"
    cat "$OUT/phd/benchmark_pipeline.md" 2>/dev/null
    ;;
  families-14b)
    e2e_models chronoedit-14b-720p:80 anyflow14b-720p:100 wan-animate14b-720p:100 helios14b-384p:60 \
      cosmos2.5-14b-704p:110
    ;;
  families-more)
    e2e_models easyanimate-12b-512p:60 consisid-480p:50 kandinsky5-lite-512p:60 kandinsky5-pro-768p:200
    ;;
  cosmos-loop)
    run pipeline_cosmos 560 python3 scripts/benchmark_pipeline.py --models cosmos2.5-2b-704p --steps 8 --no-decode \
      --warmup-steps 1 --budget-s 520 --settings default@1,fa4-dense@1,dbcache,dbcache+draft --out "$OUT/pc"
    cat "$OUT/pc/benchmark_pipeline.md" 2>/dev/null
    ;;
  h200)
    e2e_models minimax-h3-768p:280 kandinsky6-480p:280
    ;;
  families)
    e2e_models ltx13b-704p:90 cogvideox1.5-5b-768p:100 ltx2-19b-704p:100 wan-vace14b-720p:100 skyreels-v2-14b-720p:160
    ;;
  hunyuan)
    run pipeline_hunyuan 560 python3 scripts/benchmark_pipeline.py --models hunyuan-720p --no-decode --warmup-steps 1 \
      --budget-s 550 --settings default@2,fa4-dense@2,draft@4 --out "$OUT/phv"
    cat "$OUT/phv/benchmark_pipeline.md" 2>/dev/null
    ;;
  kernel-rows)
    run attention_rows 200 python3 scripts/benchmark_attention.py --shapes wan14b-720p hunyuan-720p --backends fa4 \
      --sparsities 0.9 --selections topk row_topk --out "$OUT/attention_rows.md"
    cat "$OUT/attention_rows.md" 2>/dev/null
    ;;
  hunyuan-kernel)
    run attention_hv 120 python3 scripts/benchmark_attention.py --shapes hunyuan-720p --backends fa4 --sparsities 0.9 \
      --out "$OUT/attention_hv.md"
    cat "$OUT/attention_hv.md" 2>/dev/null
    # HunyuanVideo-1.5's default forward runs SDPA with its [B, 1, S, S] mask
    e2e_models hunyuan15-720p:300
    ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
cat "$OUT/stages.txt"
