#!/usr/bin/env bash
# System parts the test suite drives for real: headless Chromium (HTML report and arena tests)
# and a PostgreSQL server (catalog tests). Installs them from Debian's packages when they are
# missing and this machine can (root with apt-get); otherwise says so, and those tests skip.
# Idempotent: a second run does nothing.
set -uo pipefail

# llama.cpp's native llama-server for tests/test_llama_cpp.py: built once (minutes), then cached
# outside the repo (scripts/build-llama-server.sh). Runs on every way out, after the installs.
build_llama() {
    bash "$(dirname "${BASH_SOURCE[0]}")/build-llama-server.sh" \
        || echo "test-setup: llama-server not built; tests/test_llama_cpp.py will skip" >&2
}
trap build_llama EXIT

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v c++ >/dev/null 2>&1 && command -v make >/dev/null 2>&1 || need+=(g++ make)
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
    || need+=(postgresql)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "test-setup: ${need[*]} missing and cannot be installed here (needs root and apt-get);" \
         "the tests that drive them will skip" >&2
    exit 0
fi
echo "test-setup: installing ${need[*]} from Debian's packages..." >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends "${need[@]}" >/tmp/slobench-test-setup.log 2>&1; then
    apt-get update -q >>/tmp/slobench-test-setup.log 2>&1
    apt-get install -y -q --no-install-recommends "${need[@]}" >>/tmp/slobench-test-setup.log 2>&1 \
        || { echo "test-setup: apt-get failed (see /tmp/slobench-test-setup.log);" \
                  "those tests will skip" >&2; exit 0; }
fi
# The Debian package starts a cluster of its own; the tests start their own server instead.
if [[ " ${need[*]} " == *" postgresql "* ]]; then
    (service postgresql stop || true) >/dev/null 2>&1
fi
echo "test-setup: done" >&2
