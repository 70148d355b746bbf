#!/usr/bin/env bash
# Step 3 of 3: quantize the merged model for serving -> ./outputs/quantized.
# Defaults are the usual AWQ script's; override any flag, e.g. --quantization-type rtn --group-size 64.
set -euo pipefail
LOWBIT=${LOWBIT:-lowbit}
$LOWBIT quantize \
  --model-path "${MERGED_DIR:-./outputs/merged}" \
  --output-dir "${QUANTIZED_DIR:-./outputs/quantized}" \
  --quantization-type "${QUANTIZATION_TYPE:-awq}" \
  --bits 4 \
  --group-size 128 \
  "$@"
