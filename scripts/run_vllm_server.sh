#!/usr/bin/env bash
# Serve a quantized checkpoint with vLLM's OpenAI-compatible server.
#
# A thin wrapper over `lowbit serve MODEL --engine vllm`: it reads the checkpoint's
# config.json, picks vLLM's --quantization for its format (gptq_marlin / gptq, awq_marlin /
# awq, compressed-tensors, ...) and runs `vllm serve` when vLLM is installed; otherwise it
# prints the exact command and says why it did not run it (exit status 1).
#
#   scripts/run_vllm_server.sh --model-path ./outputs/quantized --port 8000 --tensor-parallel-size 2
#
# Flags: --model-path (default ./outputs/quantized), --host (127.0.0.1), --port (8000),
# --tensor-parallel-size, --max-model-len, --max-num-seqs, --api-key (or $LOWBIT_API_KEY),
# --served-model-name, --gpu-memory-utilization, --dtype; --quantization is accepted and
# ignored (the checkpoint's config.json decides). Anything after `--` goes to `vllm serve` as is.
set -euo pipefail

model="./outputs/quantized"
args=()
vllm_args=()
quantization=""

need() { [[ $# -ge 2 ]] || { echo "error: $1 needs a value" >&2; exit 2; }; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --model-path|--model) need "$@"; model="$2"; shift 2 ;;
    --host|--port|--tensor-parallel-size|--max-model-len|--api-key|--served-model-name)
      need "$@"; args+=("$1" "$2"); shift 2 ;;
    --max-num-seqs) need "$@"; args+=(--max-batch-size "$2"); shift 2 ;;
    --gpu-memory-utilization|--dtype) need "$@"; vllm_args+=("$1" "$2"); shift 2 ;;
    --quantization) need "$@"; quantization="$2"; shift 2 ;;
    --) shift; vllm_args+=("$@"); break ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown flag $1 (see $0 --help; pass vLLM's own flags after --)" >&2; exit 2 ;;
  esac
done

if command -v lowbit >/dev/null 2>&1; then
  lowbit=(lowbit)
else
  lowbit=("${PYTHON:-python3}" -m lowbit)
fi

if [[ -n "$quantization" ]]; then
  echo "note: --quantization $quantization ignored: lowbit reads the method from $model/config.json" >&2
fi

# One string for --vllm-args, each argument shell-quoted (lowbit splits it with shlex); the
# `=` form keeps argparse from reading a lone "--flag" value as one of its own options.
extra=""
if [[ ${#vllm_args[@]} -gt 0 ]]; then
  extra="$(printf '%q ' "${vllm_args[@]}")"
fi

exec "${lowbit[@]}" serve "$model" --engine vllm ${args[@]+"${args[@]}"} --vllm-args="$extra"
