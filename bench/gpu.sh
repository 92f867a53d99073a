#!/usr/bin/env bash
# GPU benchmarks on a host without internet that has Python 3.12, torch (CUDA) and transformers.
#
#   bench/gpu.sh compare [extra bench.compare options]   # seed comparison, Qwen3-0.6B shape
#   bench/gpu.sh e2e     [extra bench.compare options]   # rerankd alone, 100 x 256-token documents
#
# Needs the server's wheels in .whl/ (see docs/benchmarks.md, "GPU"); installs them into /tmp/site
# and builds the model into /tmp/qwen3-shaped once per machine. Results go to $OUT (default ./out).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
SITE=${SITE:-/tmp/site}
PY=${PYTHON:-python3}
MODEL=${MODEL:-/tmp/qwen3-shaped}
mkdir -p "$OUT"

if [ ! -f "$SITE/.done" ]; then
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl
  touch "$SITE/.done"
fi
export PYTHONPATH="$SITE:$PWD" HF_HUB_OFFLINE=1
if [ ! -f "$MODEL/config.json" ]; then
  "$PY" -m bench.make_qwen3_shaped "$MODEL"
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi

what=${1:-compare}
shift || true
case "$what" in
  compare)
    "$PY" -m bench.compare --model "$MODEL" --device cuda \
      --concurrency 10 --documents 20 --doc-tokens 200 --duration 30 --warmup 10 \
      --json "$OUT/gpu-compare.json" --log-dir "$OUT/logs" "$@"
    ;;
  e2e)
    "$PY" -m bench.compare --servers rerankd --model "$MODEL" --device cuda \
      --concurrency 4,8,16,32 --documents 100 --doc-tokens 256 --duration 30 --warmup 10 \
      --json "$OUT/gpu-e2e.json" --plot "$OUT/gpu-e2e.png" --log-dir "$OUT/logs" "$@"
    ;;
  *)
    echo "usage: bench/gpu.sh compare|e2e [options]" >&2
    exit 2
    ;;
esac
