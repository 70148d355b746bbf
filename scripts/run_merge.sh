#!/usr/bin/env bash
# Step 2 of 3: merge the LoRA adapter into a 16-bit copy of the base -> ./outputs/merged.
# Use the same base as scripts/run_train.sh (MODEL_PATH). Extra `lowbit merge` flags may follow.
set -euo pipefail
LOWBIT=${LOWBIT:-lowbit}
$LOWBIT merge \
  --base "${MODEL_PATH:-demo}" \
  --adapter "${ADAPTER_DIR:-./outputs/adapter}" \
  --output-dir "${MERGED_DIR:-./outputs/merged}" \
  "$@"
