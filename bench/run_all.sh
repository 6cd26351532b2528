#!/usr/bin/env bash
# Every benchmark in turn, as BENCHMARKS.md reports them: bash bench/run_all.sh [DIR]
# writes DIR/<script>.txt (default: /tmp/captioner-bench); run it on an otherwise idle machine.
# PYTHON=... picks the interpreter (default: the project's .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/captioner-bench}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
for script in encoder_paths caption_latency decoder_step beam_ranking onnx_parity server_load training_throughput feature_extraction collection_throughput; do
    "$python" "bench/$script.py" 2>&1 | tee "$out/$script.txt"
done
"$python" bench/training_throughput.py --bf16 2>&1 | tee "$out/training_throughput_bf16.txt"
"$python" bench/original_setup.py 2>&1 | tee "$out/original_setup.txt"
