#!/usr/bin/env bash
# Every GPU number in the README, in two commands on a lent CUDA machine (nothing is downloaded).
#
#   bash benchmarks/gpu_run.sh all        # the headline run, one call (~9 min): issue 6's speed rows (max vs
#                                         # stock eager and stock torch.compile, pieces, memory modes) and
#                                         # issue 3's stylize modes and their memory modes
#   bash benchmarks/gpu_run.sh generate   # issue 6: every bench_generate row that fits (~5 min)
#   bash benchmarks/gpu_run.sh rest       # issues 3, 4, 7: stylize modes, method costs, adapter training, and
#                                         # issue 6's batch-4 and older piece rows (~8 min)
#   bash benchmarks/gpu_run.sh speed      # issue 18, first 15-minute lease, one command (<= 9.5 min; ~11 min
#                                         # of device time with the start): the probe's run A, trimmed (env,
#                                         # build, max, vae: ~4.3 min), then the headline rows interleaved
#                                         # (stock eager, max, max-tuned; 10 calls each: ~4.5 min with compiles)
#   bash benchmarks/gpu_run.sh speed2     # issue 18, a second lease (<= 9.5 min): stock's documented compile
#                                         # recipe against max-tuned in one process (max-autotune compile:
#                                         # ~3-5 min), then the approximate modes, the pieces and batch 4 as the
#                                         # budget allows
#
# The probe (shared/tools/gpu_probe.py, a measuring tool that is not committed) is expected at
# .probe/gpu_probe.py: `mkdir -p .probe && cp ../shared/tools/gpu_probe.py .probe/` before the run
# (an untracked file travels with the tree). Without it `speed` skips the probe and says so.
#
# Results (Markdown tables on stdout, JSON and logs) go to $OUT (default artifacts/gpu). Python packages
# the machine lacks travel as wheels in .whl/ (diffusers, pydantic and their needs); see
# docs/performance.md for how to fetch them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-artifacts/gpu}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu_$1.txt"
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu_$1.txt"
date -u +%Y-%m-%dT%H:%MZ | tee -a "$OUT/gpu_$1.txt"

status=0
case "${1:-}" in
  all)
    timeout 370 python3 benchmarks/bench_generate.py --budget-s 345 --json "$OUT/bench_generate.json" \
      --only 'stock-style-b1,ours-max-style-b1,stock-style+layout-b1,ours-max-style+layout-b1,ours-max-latent-style-b1,ours-graphs-style-b1,ours-unet-style-b1,stock-compiled-style-b1,ours-max+vae-style-b1,ours-low-style-b1,ours-balanced-style-b1,ours-lowest-style-b1' \
      2>&1 | grep --line-buffered -v "should be kept in float32" | tee "$OUT/bench_generate.log" || status=1
    timeout 170 python3 benchmarks/bench_stylize.py --budget-s 150 --json "$OUT/bench_stylize.json" \
      --modes txt2img,controlnet,img2img,inpaint,plus,plus-low,plus-balanced,controlnet-balanced,plus-lowest \
      2>&1 | grep --line-buffered -v "should be kept in float32" | tee "$OUT/bench_stylize.log" || status=1
    echo "=== tables"; grep -h "^|\|^#\|^total\|^built" "$OUT/bench_generate.log" "$OUT/bench_stylize.log"
    ;;
  generate)
    timeout 330 python3 benchmarks/bench_generate.py --budget-s "${BUDGET:-220}" --json "$OUT/bench_generate.json" \
      2>&1 | tee "$OUT/bench_generate.log" || status=1
    ;;
  rest)
    log="$OUT/rest.log"  # one log: at most 8 files come back from a lent machine
    quiet() { grep --line-buffered -v "should be kept in float32" | tee -a "$log"; }
    timeout 120 python3 benchmarks/bench_stylize.py --budget-s 85 --json "$OUT/bench_stylize.json" 2>&1 | quiet || status=1
    timeout 80 python3 benchmarks/bench_train.py --json "$OUT/bench_train.json" 2>&1 | quiet || status=1
    timeout 90 python3 benchmarks/bench_methods.py --steps 10 --train-steps 10 --json "$OUT/bench_methods.json" \
      2>&1 | quiet || status=1
    timeout 200 python3 benchmarks/bench_generate.py --budget-s 175 --json "$OUT/bench_generate2.json" \
      --only 'stock-style-b1,ours-fast-style-b1,ours-low-style-b1,stock-style-b4,ours-fast-style-b4,ours-max-style-b1,ours-fast+resnets-style-b1,ours-flash-style-b1,ours-lowest-style-b1' \
      2>&1 | quiet || status=1
    echo "=== tables"; grep -h "^|\|^#\|^total\|^built" "$log"
    ;;
  speed)
    # 1. Probe run A, trimmed to fit (env 15 s, build 45 s, max ~150 s, vae ~45 s).
    if [ -f .probe/gpu_probe.py ]; then
      timeout 275 python3 .probe/gpu_probe.py --out "$OUT/probe" --phases env,build,max,vae --budget-s 255 2>&1 \
        | grep --line-buffered -v "should be kept in float32" | tee "$OUT/probe.log" || status=1
    else
      echo "probe skipped: copy shared/tools/gpu_probe.py to .probe/gpu_probe.py" | tee "$OUT/probe.log"
    fi
    # 2. Headline rows, interleaved, 10 timed calls each (build 45 s, max compile ~90 s or less from the
    #    probe's on-disk Inductor cache, max-tuned compile + VAE ~120 s, 30 calls ~45 s).
    timeout 290 python3 benchmarks/bench_generate.py --budget-s 270 --json "$OUT/bench_speed.json" \
      --only 'stock-style-b1,ours-max-style-b1,ours-max-tuned-style-b1,ours-max+vae16-style-b1' \
      2>&1 | grep --line-buffered -v "should be kept in float32" | tee "$OUT/bench_speed.log" || status=1
    echo "=== tables"; grep -h "^|\|^#\|^<!--" "$OUT/bench_speed.log"
    ;;
  speed2)
    # Stock's documented recipe vs max-tuned in one process, then the approximations, pieces, batch 4.
    timeout 565 python3 benchmarks/bench_generate.py --budget-s 540 --json "$OUT/bench_speed2.json" \
      --only 'stock-style-b1,stock-recipe-style-b1,ours-max-tuned-style-b1,ours-cfg-trunc-style-b1,ours-deepcache-style-b1,ours-fp8-max-style-b1,ours-turbo-style-b1,ours-max+ctx-style-b1,ours-max+prune-style-b1,ours-max+tuning-style-b1,stock-style-b4,ours-max-style-b4,ours-max-tuned-style-b4,ours-max-autotune-style-b1' \
      2>&1 | grep --line-buffered -v "should be kept in float32" | tee "$OUT/bench_speed2.log" || status=1
    echo "=== tables"; grep -h "^|\|^#\|^<!--" "$OUT/bench_speed2.log"
    ;;
  *)
    echo "usage: $0 all|generate|rest|speed|speed2" >&2
    exit 2
    ;;
esac
exit $status
