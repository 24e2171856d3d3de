#!/usr/bin/env bash
# Every GPU number in the README, in two commands on a lent CUDA machine (nothing is downloaded).
#
#   bash benchmarks/gpu_run.sh generate   # issue 6: ours vs stock diffusers, fast-path pieces, memory modes (~5 min)
#   bash benchmarks/gpu_run.sh rest       # issues 3, 4, 7: stylize modes, method costs, adapter training (~5 min)
#
# Results (Markdown tables on stdout, JSON and logs) go to $OUT (default artifacts/gpu). Python packages
# the machine lacks travel as wheels in .whl/ (diffusers, pydantic and their pure-Python needs); see
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
  generate)
    timeout 330 python3 benchmarks/bench_generate.py --budget-s "${BUDGET:-220}" --json "$OUT/bench_generate.json" \
      2>&1 | tee "$OUT/bench_generate.log" || status=1
    ;;
  rest)
    timeout 150 python3 benchmarks/bench_stylize.py --budget-s 100 --json "$OUT/bench_stylize.json" \
      2>&1 | tee "$OUT/bench_stylize.log" || status=1
    timeout 100 python3 benchmarks/bench_train.py --json "$OUT/bench_train.json" \
      2>&1 | tee "$OUT/bench_train.log" || status=1
    timeout 110 python3 benchmarks/bench_methods.py --steps 10 --train-steps 10 --json "$OUT/bench_methods.json" \
      2>&1 | tee "$OUT/bench_methods.log" || status=1
    ;;
  *)
    echo "usage: $0 generate|rest" >&2
    exit 2
    ;;
esac
exit $status
