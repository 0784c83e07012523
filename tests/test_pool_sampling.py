"""SparseDist.sample_rows (guide tables over the rows in use) is the exact inverse CDF."""

from __future__ import annotations

import numpy as np
import pytest

from slobench.workload.pool import SparseDist


def _reference(d: SparseDist, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per-row binary search: the first entry whose cumulative probability exceeds u."""
    out = np.empty(len(rows))
    for r in np.unique(rows):
        sel = rows == r
        a, b = d.offsets[r], d.offsets[r + 1]
        i = np.searchsorted(d.cum[a:b], u[sel], side="right")
        out[sel] = d.values[a + np.minimum(i, b - a - 1)]
    return out


@pytest.fixture(scope="module")
def dist() -> SparseDist:
    rng = np.random.default_rng(1)
    rows = []
    for r in range(200):
        m = int(rng.integers(1, 600)) if r % 50 else 20_000
        p = rng.random(m) ** 10  # skewed: many tiny probabilities
        p[rng.random(m) < 0.3] = 0.0  # zero-probability entries, also leading ones
        if r % 7 == 0:
            p = np.zeros(m)
            p[m // 2] = 1.0
        if p.sum() == 0:
            p[-1] = 1.0
        rows.append((np.arange(m, dtype=np.float64) + 100_000 * r, p))
    rows.append((np.zeros(0), np.zeros(0)))  # an empty row (never sampled)
    return SparseDist.from_rows(rows)


def test_sample_rows_is_the_exact_inverse_cdf(dist):
    rng = np.random.default_rng(2)
    for n_rows in (1, 3, 200):  # different row sets: the guide cache is rebuilt
        rows = rng.integers(0, n_rows, 300_000)
        u = rng.random(300_000)
        u[:500] = 0.0
        u[500:1000] = np.nextafter(1.0, 0.0)
        cum = dist.cum
        # u exactly on a cumulative probability: the next entry
        pick = rng.integers(0, len(cum), 500)
        u[1000:1500] = np.minimum(cum[pick], np.nextafter(1.0, 0.0))
        rows[1000:1500] = np.searchsorted(dist.offsets, pick, side="right") - 1
        got = dist.sample_rows(rows, u)
        np.testing.assert_array_equal(got, _reference(dist, rows, u))
        np.testing.assert_array_equal(dist.sample_rows(rows, u), got)  # cached guide


def test_zero_probability_entries_are_never_drawn(dist):
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 200, 200_000)
    got = dist.sample_rows(rows, rng.random(200_000))
    idx = (got - 100_000 * rows).astype(np.int64) + dist.offsets[rows]
    assert np.all(dist.probs()[idx] > 0)


def test_sample_rows_refuses_out_of_range_numbers_and_empty_rows(dist):
    with pytest.raises(ValueError):
        dist.sample_rows(np.array([0]), np.array([1.0]))
    with pytest.raises(ValueError):
        dist.sample_rows(np.array([0]), np.array([-0.1]))
    with pytest.raises(AssertionError):
        dist.sample_rows(np.array([200]), np.array([0.5]))
    assert dist.sample_rows(np.zeros(0, np.int64), np.zeros(0)).shape == (0,)


def test_frequencies_match_probabilities():
    d = SparseDist.from_rows([(np.array([1.0, 2.0, 3.0]), np.array([0.2, 0.0, 0.8])),
                              (np.array([5.0]), np.array([1.0]))])
    rng = np.random.default_rng(4)
    got = d.sample_rows(np.zeros(100_000, np.int64), rng.random(100_000))
    assert set(np.unique(got)) == {1.0, 3.0}
    assert np.mean(got == 1.0) == pytest.approx(0.2, abs=0.01)
    assert d.sample_rows(np.ones(10, np.int64), rng.random(10)).tolist() == [5.0] * 10
