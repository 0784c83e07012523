"""The ServeGen loader's fast paths agree with its exact ones: the one-pass parse of a dataset
file with the per-string parser, the grouped trace parse with the per-file one, the mapped cache
with a fresh parse, the precomputed borrow row with the one computed on load."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from slobench.errors import UserError
from slobench.workload import servegen as sg
from slobench.workload.servegen import (
    ServeGenData,
    _parse_many,
    _read_dataset_file,
    load_pool,
    parse_distribution,
    pool_from_data,
    read_servegen,
)
from test_workload_servegen import write_pool

NUMBER_ERRORS = ("non-finite", "negative probability", "sum to 0")


def _random_number(rng: random.Random) -> str:
    forms = [
        lambda: str(rng.randint(0, 5000)),
        lambda: repr(rng.random()),
        lambda: f"{rng.random():.3e}",
        lambda: f"{rng.random() * 10:.4E}",
        lambda: f"+{rng.randint(0, 9)}",
        lambda: f".{rng.randint(0, 99)}",
        lambda: f"{rng.randint(0, 9)}.",
        lambda: "-0",
        lambda: "0.0",
        lambda: repr(rng.random() * 1e-300),
        lambda: "1" * rng.randint(18, 40),  # long literals: rounding must agree
        lambda: "0." + "".join(rng.choice("0123456789") for _ in range(rng.randint(17, 30))),
    ]
    return rng.choice(forms)()


def _random_text(rng: random.Random) -> str:
    """A distribution string: valid (in many spellings) or subtly broken."""
    n = rng.choice([0, 1, 2, 3, 7])
    items = [f"{_random_number(rng)}: {_random_number(rng)}" for _ in range(n)]
    text = "{" + ", ".join(items) + ("," if items and rng.random() < 0.2 else "") + "}"
    mutations = [
        lambda s: s,
        lambda s: s,
        lambda s: s,
        lambda s: s.replace(": ", ":", 1),
        lambda s: s.replace(", ", " , ", 1),
        lambda s: s.replace(", ", ",\t", 1),
        lambda s: s.replace(": ", ":\n ", 1),
        lambda s: " " + s + " ",
        lambda s: s.replace("{", "{ ", 1),
        lambda s: s.replace("}", " }", 1),
        lambda s: s.replace(",", ",,", 1),
        lambda s: s.replace("{", "{,", 1),
        lambda s: s.replace(":", "::", 1),
        lambda s: s.replace(":", "", 1),
        lambda s: s.replace(", ", " ", 1),
        lambda s: s.replace(": ", ", ", 1),
        lambda s: s.replace(" ", "", 1) if ": " not in s else s.replace(": ", ": -", 1),
        lambda s: s.replace("1", "1 1", 1),
        lambda s: s.replace("0", "e", 1),
        lambda s: s.replace("0", "1e999", 1),
        lambda s: s.replace("}", "}}", 1),
        lambda s: s.replace("{", "", 1),
        lambda s: s[:-1],
        lambda s: s.replace("2", "٢", 1),
        lambda s: s.replace("5", "nan", 1),
        lambda s: s + "{}",
        lambda s: "{1: 0.5, 2 3: 0.5}",
        lambda s: "{1:, 2 3: 4}",
        lambda s: "{ , }",
    ]
    return rng.choice(mutations)(text)


def _slow(text: str) -> tuple[np.ndarray, np.ndarray] | str:
    try:
        return parse_distribution(text)
    except UserError as exc:
        return str(exc)


def test_one_pass_parser_agrees_with_the_per_string_parser():
    rng = random.Random(1)
    texts = [_random_text(rng) for _ in range(4000)]
    accepted = refused = 0
    for text in texts:
        slow = _slow(text)
        fast = _parse_many([text])
        if fast is None:  # left to the per-string parser
            continue
        counts, values, probs = fast
        if isinstance(slow, str):
            # Only the number checks, which the caller of _parse_many applies, may refuse it.
            assert any(e in slow for e in NUMBER_ERRORS), (text, slow)
            refused += 1
            continue
        accepted += 1
        assert counts.tolist() == [len(slow[0])], text
        np.testing.assert_array_equal(values, slow[0], err_msg=text)
        np.testing.assert_array_equal(probs, slow[1], err_msg=text)
        assert np.signbit(values).tolist() == np.signbit(slow[0]).tolist()
    assert accepted > 1000 and refused > 10
    # Many texts at once: the same as one by one.
    good = [t for t in texts if not isinstance(_slow(t), str) and _parse_many([t]) is not None]
    assert len(good) > 1000
    many = _parse_many(good)
    assert many is not None
    counts, values, probs = many
    assert counts.tolist() == [len(_slow(t)[0]) for t in good]
    np.testing.assert_array_equal(values, np.concatenate([_slow(t)[0] for t in good]))
    np.testing.assert_array_equal(probs, np.concatenate([_slow(t)[1] for t in good]))


def test_grammar_is_strict():
    for bad in ["{1:, 2 3: 4}", "{ , }", "{1: 2,,}", "{1: 2, 3: 4,, }", "{1: 2 , , 3: 4}",
                "{1 :: 2}", "{1: 2}}", "{{1: 2}", "{1: 2; 3: 4}", "{1: 0x10}", "{1: 1_0}"]:
        with pytest.raises(UserError, match="nothing is evaluated"):
            parse_distribution(bad)
    for good, n in [("{ }", 0), ("{1: 1,}", 1), (" {1 :\t1 ,\n2:1 , } ", 2),
                    ("{+1: .5, 2.: 5.}", 2), ("{1e3: 1E-3}", 1)]:
        assert len(parse_distribution(good)[0]) == n


def _write_dataset(path: Path, blocks: dict[int, dict[str, str]]) -> Path:
    path.write_text(json.dumps({str(b * 21600): d for b, d in blocks.items()}, indent=2))
    return path


def test_dataset_file_fast_and_fallback_paths_agree(tmp_path):
    rng = np.random.default_rng(3)
    blocks = {}
    for b in range(4):
        v = np.sort(rng.choice(5000, size=300, replace=False))
        p = rng.random(300)
        items = ", ".join(f"{x}: {float(q)!r}" for x, q in zip(v, p, strict=True))
        blocks[b] = {"input_tokens": "{" + items + "}",
                     "output_tokens": "{}" if b == 2 else "{7: 1.0}"}
    canon = _read_dataset_file(_write_dataset(tmp_path / "a.json", blocks), 5)
    # Tabs and newlines inside the strings: not the one-pass parser's business, same numbers.
    odd = {b: {k: v.replace(", ", ",\t").replace(": ", ":\n") for k, v in d.items()}
           for b, d in blocks.items()}
    assert _parse_many([odd[0]["input_tokens"]]) is None
    spaced = _read_dataset_file(_write_dataset(tmp_path / "b.json", odd), 5)
    for name in ("input_tokens", "output_tokens"):
        for a, b in ((canon[name], spaced[name]),):
            np.testing.assert_array_equal(a.sizes, b.sizes)
            np.testing.assert_array_equal(a.values, b.values)
            np.testing.assert_array_equal(a.probs, b.probs)
            np.testing.assert_array_equal(a.present, [True, True, True, True, False])
    assert canon["output_tokens"].sizes.tolist() == [1, 1, 0, 1, 0]
    v, p = parse_distribution(blocks[3]["input_tokens"])
    f = canon["input_tokens"]
    np.testing.assert_array_equal(f.values[-300:], v)
    np.testing.assert_array_equal(f.probs[-300:], p)
    # read_dataset (the public per-block view) is the same data.
    per_block = sg.read_dataset(tmp_path / "a.json")
    np.testing.assert_array_equal(per_block["input_tokens"][3][0], v)
    assert per_block["output_tokens"][2][0].size == 0


@pytest.mark.parametrize(("text", "expect"), [
    ("{1: 0.5, 2: -0.5}", "negative probability"),
    ("{1: 1e999}", "non-finite"),
    ("{1: 0, 2: 0.0}", "sum to 0"),
    ("{1: 0.5,, 2: 0.5}", "nothing is evaluated"),
    ("{1: 0.5 2: 0.5}", "nothing is evaluated"),
])
def test_bad_distribution_in_a_big_file_names_file_line_block_field(tmp_path, text, expect):
    good = "{" + ", ".join(f"{i}: 0.01" for i in range(100)) + "}"
    blocks = {b: {"input_tokens": good, "output_tokens": good} for b in range(6)}
    blocks[4]["output_tokens"] = text
    f = _write_dataset(tmp_path / "chunk-0-dataset.json", blocks)
    with pytest.raises(UserError) as exc:
        _read_dataset_file(f, 6)
    msg = str(exc.value)
    assert expect in msg and "(block 86400, field output_tokens)" in msg
    line = int(msg.split("chunk-0-dataset.json:")[1].split()[0])
    assert text[:20] in f.read_text().splitlines()[line - 1]


def test_traces_in_groups_of_different_lengths_and_a_bad_line(tmp_path, monkeypatch):
    monkeypatch.setattr(sg, "_TRACE_GROUP_BYTES", 200)  # a group per file or two
    rates = [[1.0] * 10, [2.0] * 10, [3.0] * 10, [4.0] * 10]
    pool = write_pool(tmp_path / "p", rates)
    short = pool / "chunk-2-trace.csv"
    short.write_text("\n".join(short.read_text().splitlines()[:7]))  # no final newline either
    tr = sg.read_traces(sorted(pool.glob("chunk-*-trace.csv")))
    assert tr.rate.shape == (4, 10)
    assert tr.rate[2].tolist() == [3.0] * 7 + [0.0] * 3 and tr.pattern[2, 7:].tolist() == [0] * 3
    assert tr.rate[3].tolist() == [4.0] * 10
    one = sg.read_trace(pool / "chunk-1-trace.csv")
    np.testing.assert_array_equal(tr.shape[1], one.shape)
    np.testing.assert_array_equal(tr.scale[1], one.scale)
    bad = pool / "chunk-3-trace.csv"
    lines = bad.read_text().splitlines()
    lines[5] = "3000,1.0,2.0,Gamma,-1,4"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"chunk-3-trace.csv:6: .*shape"):
        sg.read_traces(sorted(pool.glob("chunk-*-trace.csv")))


def test_cache_is_a_plain_npz_mapped_read_only(tmp_path):
    rng = np.random.default_rng(0)
    pool_dir = write_pool(tmp_path / "p", rng.uniform(0, 5, size=(3, 80)).tolist(), missing=(1,))
    fresh, _ = read_servegen(pool_dir, cache=False)
    data, report = read_servegen(pool_dir, cache_dir=tmp_path / "c")
    again, report2 = read_servegen(pool_dir, cache_dir=tmp_path / "c")
    assert report["cache"] == "written" and report2["cache"] == "hit"
    for d in (data, again):
        assert d.borrow_row and fresh.borrow_row
        for name, f in d.fields.items():
            g = fresh.fields[name]
            for a in ("offsets", "values", "cum"):
                x = getattr(f, a)
                assert not x.flags.writeable
                np.testing.assert_array_equal(x, getattr(g, a))
        np.testing.assert_array_equal(d.trace.rate, fresh.trace.rate)
        assert d.trace.rate.ctypes.data % 64 == 0
    with np.load(report["cache_path"], allow_pickle=False) as z:
        assert json.loads(str(z["meta"]))["fields"] == ["input_tokens", "output_tokens"]
        np.testing.assert_array_equal(z["field.input_tokens.pairs"][:, 1],
                                      fresh.fields["input_tokens"].cum)
    # A damaged cache is rebuilt, not trusted.
    path = Path(report["cache_path"])
    path.write_bytes(path.read_bytes()[:1000])
    _, report3 = read_servegen(pool_dir, cache_dir=tmp_path / "c")
    assert report3["cache"] == "written"


def test_precomputed_borrow_row_equals_the_one_computed_on_load(tmp_path):
    rng = np.random.default_rng(5)
    pool_dir = write_pool(tmp_path / "p", rng.uniform(0, 5, size=(5, 150)).tolist(),
                          missing=(1, 3))
    data, _ = read_servegen(pool_dir, cache_dir=tmp_path / "c")
    nb, n = data.n_blocks, len(data.client_ids)
    bare = ServeGenData(data.name, data.kind, data.client_ids, data.has_dataset, data.trace, nb,
                        {k: sg._client_rows(d, n, nb) for k, d in data.fields.items()},
                        borrow_row=False)
    a = pool_from_data(data, missing="borrow")
    b = pool_from_data(bare, missing="borrow")
    assert a.lengths.n_rows == b.lengths.n_rows == n + 1
    for name in a.lengths.fields:
        for attr in ("offsets", "values", "cum"):
            np.testing.assert_array_equal(getattr(a.lengths.fields[name], attr),
                                          getattr(b.lengths.fields[name], attr))
    dropped = pool_from_data(data, missing="drop")
    assert dropped.lengths.n_rows == n and dropped.n_clients == 3
    assert dropped.lengths.fields["input_tokens"].n_rows == n * nb
    assert load_pool(pool_dir, cache=False, missing="borrow").summary() == a.summary()
