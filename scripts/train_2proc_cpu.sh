#!/usr/bin/env bash
# Two-process data-parallel training on CPU (gloo) on the tiny model: torchrun + ACCELERATE_USE_CPU=1
# (what `accelerate launch --multi_gpu` runs on GPUs; `accelerate launch --cpu --num_processes 2`
# starts a single process unless given an MPI hostfile).
# Proves the distributed path (DDP wrap, per-rank data shares, gathered loss, rank-0 saving,
# per-rank data positions in checkpoints, resume) without a GPU. Takes ~20-40 s on 2 idle cores.
#
#   scripts/train_2proc_cpu.sh [WORKDIR]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python}"
WORK="${1:-$(mktemp -d)}"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 ACCELERATE_USE_CPU=1
"$PY" -m instantstyle make-tiny "$WORK/tiny" >/dev/null
"$PY" "$ROOT/tests/training/make_shapes.py" "$WORK/shapes" 8
COMMON=(--base "$WORK/tiny/sdxl" --image-encoder "$WORK/tiny/IP-Adapter/sdxl_models/image_encoder"
        --data "$WORK/shapes" --out "$WORK/out" --resolution 32 --batch-size 1 --checkpoint-every 2 --quiet)
"$PY" -m torch.distributed.run --nproc_per_node 2 --master_port "${PORT:-29517}" -m instantstyle train-adapter "${COMMON[@]}" --max-steps 2
"$PY" -m torch.distributed.run --nproc_per_node 2 --master_port "${PORT:-29517}" -m instantstyle train-adapter "${COMMON[@]}" --max-steps 3 --resume latest
test -f "$WORK/out/checkpoints/checkpoint-0000002/data_state_1.json"
test -f "$WORK/out/adapter.safetensors"
"$PY" - "$WORK/out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
state = json.loads((out / "checkpoints" / "checkpoint-0000002" / "trainer_state.json").read_text())
assert state["num_processes"] == 2 and state["global_step"] == 2, state
report = json.loads((out / "data_report.json").read_text())
assert report["used"] == 6, report  # 2 processes x 3 steps x batch 1, counted across the resume
print("2-process CPU training + resume OK:", out / "adapter.safetensors")
PY
