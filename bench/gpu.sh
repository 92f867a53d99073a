#!/usr/bin/env bash
# GPU benchmarks on a host without internet that has Python 3.12, torch (CUDA) and transformers.
#
#   bench/gpu.sh compare [extra bench.compare options]   # seed comparison, Qwen3-0.6B shape
#   bench/gpu.sh e2e     [extra bench.compare options]   # rerankd alone, 100 x 256-token documents
#   bench/gpu.sh eager | compile [extra options]          # rerankd, with and without shared prefix
#                                                         # (PREFIXES=no-shared-prefix: without only)
#   bench/gpu.sh compile-fp8 [extra options]              # the same, compiled, --quantize fp8
#   bench/gpu.sh fp8-probe [bench.fp8_probe options]      # the decoder's forward pass, bf16 vs fp8
#   bench/gpu.sh prefix [bench.prefix_saving options]     # one batch, full rows vs packed shared
#                                                         # prefix, eager and compiled
#   bench/gpu.sh vllm-serve [extra options]               # vLLM's own server, same model and load
#   bench/gpu.sh side-by-side                             # all of the last three: one run, < 10 min
#   bench/gpu.sh warm-start [extra options]               # two --compile starts, a fresh cache folder
#
# COMPILE_SCOPE=model|layers (default: the server's, layers) picks what --compile compiles.
#
# Needs the server's wheels in .whl/ (see docs/benchmarks.md, "GPU") or the vLLM kit carried in
# .carry/ (../shared/gpu-kit: it holds rerankd's wheels too); installs them into /tmp/site and
# builds the model into /tmp/qwen3-shaped once per machine. Results go to $OUT (default ./out).
# Every rerankd run pins --engine torch: auto would pick the vLLM engine wherever vLLM imports.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
SITE=${SITE:-/tmp/site}
PY=${PYTHON:-python3}
MODEL=${MODEL:-/tmp/qwen3-shaped}
mkdir -p "$OUT"

if [ -f .carry/kit/setup-on-gpu.sh ]; then
  bash .carry/kit/setup-on-gpu.sh  # unpacks vLLM and rerankd's wheels into /tmp/site, marks it done
fi
if [ ! -f "$SITE/.done" ]; then
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl
  touch "$SITE/.done"
fi
export PYTHONPATH="$SITE:$PWD" HF_HUB_OFFLINE=1
# The kit's wheels predate the /docs assets package; the benchmarks never open /docs, so an empty
# stand-in (the folder the server mounts) lets the server start.
if ! "$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("swagger_ui") is None)'; then
  mkdir -p "$SITE/swagger_ui/static" && touch "$SITE/swagger_ui/__init__.py"
fi
if [ ! -f "$MODEL/config.json" ]; then
  "$PY" -m bench.make_qwen3_shaped "$MODEL"
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi

# The side-by-side workload: 100 documents x 256 words (349 tokens a pair), 16 clients.
SIDE=(--model "$MODEL" --device cuda --dtype bfloat16 --concurrency 16 --documents 100 --doc-tokens 256
  --duration ${SECONDS_PER_RUN:-15} --warmup 5 --log-dir "$OUT/logs" --start-timeout 300)
# Compile artifacts persist here between the two --compile starts (and while the machine stays warm).
COMPILE_CACHE=${COMPILE_CACHE:-/tmp/rerankd-compile-cache}
SCOPE=${COMPILE_SCOPE:+ --compile-scope $COMPILE_SCOPE}

rerankd_pair() {  # $1: eager|compile|compile-fp8; then extra bench.compare options
  local mode=$1 flags="--engine torch --no-cache"
  shift
  [ "$mode" != eager ] && flags="$flags --compile --compile-cache-dir $COMPILE_CACHE$SCOPE"
  [ "$mode" = compile-fp8 ] && flags="$flags --quantize fp8"
  for prefix in ${PREFIXES:-shared-prefix no-shared-prefix}; do
    "$PY" -m bench.compare --servers rerankd --label "rerankd-$mode-$prefix" "${SIDE[@]}" \
      --server-arg="$flags --$prefix" --json "$OUT/rerankd-$mode-$prefix.json" "$@"
  done
}

vllm_serve() {
  # VLLM_CACHE_ROOT: vLLM's compile cache, kept for the machine's lifetime.
  VLLM_CACHE_ROOT=${VLLM_CACHE_ROOT:-/tmp/vcache} "$PY" -m bench.compare --servers vllm-serve "${SIDE[@]}" \
    --vllm-arg="--max-num-seqs 512 --max-num-batched-tokens 16384 --enable-prefix-caching" \
    --json "$OUT/vllm-serve.json" "$@"
}

what=${1:-compare}
shift || true
case "$what" in
  eager | compile | compile-fp8)
    rerankd_pair "$what" "$@"
    ;;
  prefix)
    # One full 16,384-token batch of one request's pairs (47 x 349 tokens), all 28 layers.
    for mode in eager compile; do
      "$PY" -m bench.prefix_saving --layers 28 --rows 47 --device cuda --dtype bfloat16 --repeats 10 \
        $([ $mode = compile ] && echo --compile) --json "$OUT/prefix-$mode.json" "$@"
    done
    ;;
  fp8-probe)
    "$PY" -m bench.fp8_probe "$MODEL" --json "$OUT/fp8-probe.json" "$@"
    ;;
  vllm-serve)
    vllm_serve "$@"
    ;;
  side-by-side)
    started=$(date +%s)
    rerankd_pair eager
    rerankd_pair compile
    vllm_serve || echo "side-by-side: vllm-serve failed (its log is in $OUT/logs)" | tee -a "$OUT/side-by-side.txt"
    "$PY" -m bench.summary "$OUT"/rerankd-*.json "$OUT"/vllm-serve.json --json "$OUT/side-by-side.json"
    echo "side-by-side: $(($(date +%s) - started)) s" | tee -a "$OUT/side-by-side.txt"
    ;;
  warm-start)
    # The first start compiles into an empty folder, the second reuses what the first saved.
    cache=$(mktemp -d /tmp/rerankd-compile-XXXXXX)
    for start in first second; do
      "$PY" -m bench.compare --servers rerankd --label "rerankd-compile${COMPILE_SCOPE:+-$COMPILE_SCOPE}-$start-start" \
        "${SIDE[@]}" --server-arg="--engine torch --no-cache --compile --compile-cache-dir $cache$SCOPE" \
        --json "$OUT/rerankd-compile${COMPILE_SCOPE:+-$COMPILE_SCOPE}-$start-start.json" "$@"
    done
    ;;
  compare)
    "$PY" -m bench.compare --servers naive,executor,rerankd --model "$MODEL" --device cuda --server-arg="--engine torch" \
      --concurrency 10 --documents 20 --doc-tokens 200 --duration 30 --warmup 10 \
      --json "$OUT/gpu-compare.json" --log-dir "$OUT/logs" "$@"
    ;;
  e2e)
    "$PY" -m bench.compare --servers rerankd --model "$MODEL" --device cuda --server-arg="--engine torch" \
      --concurrency 4,8,16,32 --documents 100 --doc-tokens 256 --duration 30 --warmup 10 \
      --json "$OUT/gpu-e2e.json" --plot "$OUT/gpu-e2e.png" --log-dir "$OUT/logs" "$@"
    ;;
  *)
    echo "usage: bench/gpu.sh compare|e2e|eager|compile|compile-fp8|prefix|fp8-probe|vllm-serve|side-by-side|warm-start [options]" >&2
    exit 2
    ;;
esac
