#!/usr/bin/env bash
# Builds llama.cpp's native `llama-server` for the llama.cpp integration tests
# (tests/test_llama_cpp.py; docs/engines.md).
#
# The source comes from the sdist of `llama-cpp-python` on PyPI, which vendors the whole of
# llama.cpp, including vocab-only GGUF files of real tokenizers under models/. The build needs
# no other network: the web UI, its prebuilt download, and OpenSSL are off.
#
# Result, in a cache outside the repository, keyed by version (override the root with
# SLOBENCH_LLAMA_CACHE):
#   ~/.cache/slobench/llama.cpp/<version>/bin/llama-server
#   ~/.cache/slobench/llama.cpp/<version>/models/ggml-vocab-*.gguf
# A second run finds the binary and returns at once. A lock keeps two runs from building at once.
#
# Usage: scripts/build-llama-server.sh [--print-dir]
# Environment: SLOBENCH_LLAMA_CACHE (cache root), SLOBENCH_LLAMA_VERSION (llama-cpp-python
# version; default pinned below), SLOBENCH_LLAMA_JOBS (parallel compile jobs; default nproc),
# PYTHON (interpreter with pip; default .venv/bin/python, else python3).
set -euo pipefail

VERSION="${SLOBENCH_LLAMA_VERSION:-0.3.36}"
ROOT="${SLOBENCH_LLAMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/slobench/llama.cpp}"
DIR="$ROOT/$VERSION"
BIN="$DIR/bin/llama-server"
JOBS="${SLOBENCH_LLAMA_JOBS:-$(nproc 2>/dev/null || echo 2)}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$HERE/.venv/bin/python" ]; then PYTHON="$HERE/.venv/bin/python"; else PYTHON=python3; fi
fi

if [ "${1:-}" = "--print-dir" ]; then
    echo "$DIR"
    exit 0
fi

ready() { [ -x "$BIN" ] && [ -f "$DIR/READY" ]; }

if ready; then
    exit 0
fi

for tool in cmake make c++; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "build-llama-server: '$tool' not found; install cmake and a C++ compiler" \
             "(Debian: apt-get install cmake g++)" >&2
        exit 2
    }
done

# A compile that failed is not retried on every `make test` (minutes each time).
if [ -f "$DIR/FAILED" ]; then
    echo "build-llama-server: an earlier build of $VERSION failed ($(cat "$DIR/FAILED"));" \
         "delete $DIR/FAILED to try again" >&2
    exit 1
fi

mkdir -p "$DIR"
exec 9>"$DIR/.lock"
if ! flock -n 9; then
    echo "build-llama-server: another build holds $DIR/.lock; waiting for it..." >&2
    flock 9
fi
if ready; then  # the other build finished it
    exit 0
fi

start=$(date +%s)
work="$DIR/work"
rm -rf "$work"
mkdir -p "$work"
echo "build-llama-server: fetching the llama-cpp-python $VERSION sdist from PyPI..." >&2
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
    "llama-cpp-python==$VERSION" -d "$work" >"$work/download.log" 2>&1 \
    || { echo "build-llama-server: pip download of llama-cpp-python==$VERSION failed" \
              "(no PyPI access?); see $work/download.log" >&2; exit 1; }
tar -xzf "$work"/llama_cpp_python-"$VERSION".tar.gz -C "$work"
src="$work/llama_cpp_python-$VERSION/vendor/llama.cpp"
[ -f "$src/CMakeLists.txt" ] || { echo "build-llama-server: no llama.cpp in the sdist" >&2; exit 1; }

echo "build-llama-server: building llama-server with $JOBS jobs (takes minutes)..." >&2
cmake -S "$src" -B "$work/build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=ON \
    >"$work/configure.log" 2>&1 \
    || { echo "cmake configure failed; see $work/configure.log" | tee "$DIR/FAILED" >&2; exit 1; }
cmake --build "$work/build" --target llama-server -j "$JOBS" >"$work/build.log" 2>&1 \
    || { echo "compile failed; see $work/build.log" | tee "$DIR/FAILED" >&2; exit 1; }

mkdir -p "$DIR/bin" "$DIR/models"
cp "$work/build/bin/llama-server" "$BIN"
cp "$src"/models/ggml-vocab-*.gguf "$DIR/models/"
cp "$src/LICENSE" "$DIR/LICENSE"
rm -rf "$work"
took=$(( $(date +%s) - start ))
echo "llama-cpp-python $VERSION; built in ${took}s with $JOBS jobs" >"$DIR/READY"
echo "build-llama-server: done in ${took}s: $BIN" >&2
