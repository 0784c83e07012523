"""Helpers for tests that run real benchmarks against real (scripted) servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from slobench.benchmark import Analysis, BenchmarkConfig, TargetConfig, run_benchmark
from slobench.client.pacing import LoadPlan
from slobench.client.runner import Timeouts
from slobench.engine.core import StepShape
from slobench.schema import conform_workload


def fixed_workload(n: int, *, gap_s: float = 0.1, input_tokens: int = 32,
                   output_tokens: int = 20, app: str = "chatbot", start_s: float = 0.05
                   ) -> pa.Table:
    ids = [f"q{i:04d}" for i in range(n)]
    return conform_workload(pa.table({
        "request_id": ids,
        "arrival_s": start_s + np.arange(n) * gap_s,
        "client_id": ["c0"] * n,
        "app": [app] * n,
        "session_id": ids,
        "input_tokens": np.full(n, input_tokens, dtype=np.int64),
        "output_tokens": np.full(n, output_tokens, dtype=np.int64),
    }))


def bench(url: str, workload: pa.Table, tmp: Path, *, plan: LoadPlan | None = None,
          engine: str = "generic", stream: bool = True, extra_body: dict[str, Any] | None = None,
          timeouts: Timeouts | None = None, slo: str | None = None, endpoint: str = "chat",
          api_key: str | None = None, headers: dict[str, str] | None = None) -> Analysis:
    cfg = BenchmarkConfig(
        target=TargetConfig(url=url, engine=engine, stream=stream, endpoint=endpoint,
                            extra_body=extra_body or {}, api_key=api_key,
                            headers=headers or {}),
        plan=plan or LoadPlan(mode="open"),
        timeouts=timeouts or Timeouts(request_s=30, stall_s=10),
        slo=slo, out=tmp / "runs")
    return run_benchmark(workload, cfg)


def records_of(analysis: Analysis) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows = pq.read_table(analysis.run.path / "records.parquet").to_pylist()
    return sorted(rows, key=lambda r: r["scheduled_s"])


class LinearCost:
    """A test cost model: step = a + b*prefill + c*decode + d*kv_read (seconds)."""

    def __init__(self, kv_tokens: int = 1_000_000, a: float = 0.005, b: float = 2e-5,
                 c: float = 1e-4, d: float = 1e-8) -> None:
        self.kv_tokens = kv_tokens
        self.a, self.b, self.c, self.d = a, b, c, d

    def step_time(self, shape: StepShape) -> float:
        return (self.a + self.b * shape.prefill_tokens + self.c * shape.decode_tokens
                + self.d * shape.kv_read_tokens)

    def kv_capacity_tokens(self) -> int:
        return self.kv_tokens
