#!/usr/bin/env bash
# The issue-4 bar: `lowbit compare` on the demo model (fp16 baseline, LLM.int8, NF4, RTN w4 g128),
# WikiText-2 test, 8 windows of 2048 tokens; prints the table and the wall time, writes
# report.md / report.json / report.png to ${OUT:-outputs/compare-demo}.
#   DATA=../shared/data METHODS=fp16,int8,nf4,rtn,gptq,awq benchmarks/compare_demo.sh [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
export LOWBIT_DATA_DIR="${DATA:-../shared/data}"
start=$(date +%s)
lowbit compare demo --methods "${METHODS:-fp16,int8,nf4,rtn}" --max-windows "${WINDOWS:-8}" \
    --output-dir "${OUT:-outputs/compare-demo}" --overwrite "$@"
echo "wall time: $(( $(date +%s) - start )) s ($(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg))"
