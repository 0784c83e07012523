"""Workload tables built from shared column buffers: ids, constant columns, batch sizes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from slobench.workload.generate import _Columns, _digits, generate_workload
from slobench.workload.servegen import load_pool
from test_workload_servegen import write_pool


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    rates = [[30.0, 5.0, 0.0, 12.0], [2.0, 2.0, 2.0, 2.0], [0.0, 40.0, 40.0, 1.0]]
    return load_pool(write_pool(tmp_path_factory.mktemp("b") / "p", rates, cv=1.5), cache=False)


@pytest.mark.parametrize(("start", "n", "width"), [
    (0, 25_000, 7), (9_995, 30, 6), (123_456, 100_000, 7), (0, 5, 2), (98, 5, 3),
    (999_990, 20, 7), (12, 0, 6), (5, 3, 9), (99_999_970, 30, 8),
])
def test_digits(start, n, width):
    out = np.empty((n, width), np.uint8)
    _digits(out, start)
    assert [bytes(r) for r in out] == [str(i).zfill(width).encode()
                                       for i in range(start, start + n)]


def test_ids_and_constant_columns():
    cols = _Columns(pa.array(["a/1", "b/22"]), "chatbot", 6)
    b = cols.batch(np.array([0.5, 1.0, 2.0]), np.array([1, 0, 1]),
                   {"input_tokens": np.array([3, 4, 5]), "output_tokens": np.array([6, 7, 8])},
                   999_998)
    b.validate(full=True)
    assert b["request_id"].to_pylist() == ["r999998", "r999999", "r1000000"]  # wider: padded
    assert b["session_id"].to_pylist() == b["request_id"].to_pylist()
    assert b["client_id"].to_pylist() == ["b/22", "a/1", "b/22"]
    assert b["app"].to_pylist() == ["chatbot"] * 3
    assert b["turn"].to_pylist() == [0] * 3 and b["think_s"].to_pylist() == [0.0] * 3
    assert b["reasoning_tokens"].to_pylist() == [0] * 3
    assert b["prefix_blocks"].to_pylist() == [[]] * 3 == b["image_tokens"].to_pylist()
    assert b["prompt"].to_pylist() == [None] * 3 and b["prompt"].null_count == 3
    # A later, bigger batch grows the shared buffers; the earlier one is unchanged.
    n = 200_000
    big = cols.batch(np.zeros(n), np.zeros(n, np.int64),
                     {"input_tokens": np.ones(n, np.int64), "output_tokens": np.ones(n, np.int64)},
                     0)
    big.validate(full=True)
    assert big["request_id"][n - 1].as_py() == "r199999"
    assert pc.all(pc.equal(big["app"], "chatbot")).as_py()
    assert b["request_id"].to_pylist() == ["r999998", "r999999", "r1000000"]


@pytest.mark.parametrize("mode", ["renewal", "servegen"])
def test_batch_size_does_not_change_the_table(pool, mode):
    base = generate_workload(pool, 2400, mode=mode, seed=11, batch_s=3600.0)
    base.validate(full=True)
    for batch_s in (600.0, 97.0, 1e9):
        other = generate_workload(pool, 2400, mode=mode, seed=11, batch_s=batch_s)
        assert other.equals(base)
    default = generate_workload(pool, 2400, mode=mode, seed=11)
    assert default.equals(base) and default["arrival_s"].num_chunks == 4
