#!/usr/bin/env bash
# Step 1 of 3: QLoRA fine-tuning (frozen NF4 base + LoRA adapters) -> ./outputs/adapter.
# Then: scripts/run_merge.sh, scripts/run_quantize.sh. Any `lowbit train` flag can be added
# (later flags win), e.g.: scripts/run_train.sh --model-path ./my-model --dataset data.jsonl --max-steps 200
set -euo pipefail
LOWBIT=${LOWBIT:-lowbit}
$LOWBIT train \
  --model-path "${MODEL_PATH:-demo}" \
  --dataset "${DATASET:-pydoc}" \
  --output-dir "${ADAPTER_DIR:-./outputs/adapter}" \
  --max-seq-length 512 \
  --per-device-train-batch-size 4 \
  --gradient-accumulation-steps 1 \
  --learning-rate 2e-4 \
  --warmup-ratio 0.03 \
  --num-train-epochs 1 \
  --logging-steps 10 \
  --save-steps 100 \
  --lora-r 16 --lora-alpha 32 --lora-dropout 0.05 \
  --gradient-checkpointing \
  "$@"
