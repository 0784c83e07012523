"""SLO spec parser: grammar, defaults, round trips, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slobench.errors import UserError
from slobench.slo.spec import (
    DEFAULT_ATTAIN,
    ClassSLO,
    Constraint,
    SLOSet,
    default_slos,
    format_duration,
    parse_slo,
)
from slobench.slo.stats import describe, percentiles


def constraints(slos: SLOSet, name: str) -> dict[str, tuple[float, float]]:
    return {c.metric: (c.limit_s, c.per_token_s) for c in slos.classes[name].constraints}


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    s = parse_slo(None)
    assert list(s.classes) == ["chatbot", "coding", "summarization", "tool", "reasoning", "*"]
    assert constraints(s, "chatbot") == {"ttft": (1.0, 0.0), "tpot": (0.1, 0.0)}
    assert constraints(s, "coding") == {"ttft": (2.0, 0.0), "tpot": (0.05, 0.0)}
    assert constraints(s, "summarization") == {"ttft": (3.0, 0.0), "tpot": (0.1, 0.0)}
    assert constraints(s, "tool") == {"ttft": (1.0, 0.0), "tpot": (0.05, 0.0)}
    assert constraints(s, "reasoning") == {
        "ttft": (1.0, 0.0), "think_tpot": (0.05, 0.0), "answer_tpot": (0.1, 0.0)}
    assert constraints(s, "*") == {"ttft": (1.0, 0.0), "tpot": (0.1, 0.0)}
    assert all(c.attain == DEFAULT_ATTAIN == 0.9 for c in s.classes.values())
    assert parse_slo("") == s == parse_slo("  ;  ") == default_slos()


def test_for_app_falls_back_to_wildcard() -> None:
    s = parse_slo("*: e2e<=5s")
    assert s.for_app("coding").name == "coding"
    assert s.for_app("translation").name == "*"
    assert s.for_app("translation").constraints == (Constraint("e2e", 5.0),)


def test_user_class_replaces_default_and_others_stay() -> None:
    s = parse_slo("chatbot: ttft<=500ms, attain>=99%; batch: e2e<=2min")
    assert s.classes["chatbot"] == ClassSLO("chatbot", (Constraint("ttft", 0.5),), 0.99)
    assert s.classes["batch"] == ClassSLO("batch", (Constraint("e2e", 120.0),), 0.9)
    assert s.classes["coding"] == default_slos().classes["coding"]
    assert s.user_classes == ("chatbot", "batch")


# --------------------------------------------------------------------------- grammar


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("1.5s", 1.5), ("100ms", 0.1), ("250us", 0.00025), ("2min", 120.0),
     ("0.5 s", 0.5), (".25s", 0.25), ("1e3ms", 1.0), ("40MS", 0.04)],
)
def test_durations(text: str, seconds: float) -> None:
    s = parse_slo(f"x: e2e<={text}")
    assert s.classes["x"].constraints[0].limit_s == seconds


def test_whitespace_and_all_metrics() -> None:
    s = parse_slo(
        "  chatbot :ttft <= 1s ,tpot<=  100ms , itl<=300ms,\n e2e<=20s , ttfa<=2s ,"
        " think_tpot<=40ms, answer_tpot<=90ms , attain >= 0.95 ;\n"
    )
    c = s.classes["chatbot"]
    assert [(k.metric, k.limit_s) for k in c.constraints] == [
        ("ttft", 1.0), ("tpot", 0.1), ("itl", 0.3), ("e2e", 20.0), ("ttfa", 2.0),
        ("think_tpot", 0.04), ("answer_tpot", 0.09)]
    assert c.attain == 0.95


def test_attain_forms() -> None:
    assert parse_slo("a: ttft<=1s, attain>=99%").classes["a"].attain == 0.99
    assert parse_slo("a: ttft<=1s, attain>=0.99").classes["a"].attain == 0.99
    assert parse_slo("a: ttft<=1s, attain>=100%").classes["a"].attain == 1.0
    assert parse_slo("a: ttft<=1s, attain>=99.9%").classes["a"].attain == 0.999


def test_deadline() -> None:
    s = parse_slo("x: deadline<=1s+100ms/tok; y: deadline <= 2s + 5ms / token; z: deadline<=3s")
    assert s.classes["x"].constraints == (Constraint("deadline", 1.0, 0.1),)
    assert s.classes["y"].constraints == (Constraint("deadline", 2.0, 0.005),)
    assert s.classes["z"].constraints == (Constraint("deadline", 3.0, 0.0),)
    assert s.classes["x"].constraints[0].text == "deadline<=1s+100ms/tok"
    assert s.classes["z"].constraints[0].text == "deadline<=3s"


def test_wildcard_entry() -> None:
    s = parse_slo("*: ttft<=2s, e2e<=10s")
    assert s.classes["*"].constraints == (Constraint("ttft", 2.0), Constraint("e2e", 10.0))


# --------------------------------------------------------------------------- text / dict forms


@pytest.mark.parametrize(
    "seconds", [1.0, 1.5, 0.1, 0.05, 0.00025, 120.0, 90.0, 0.3, 2.5e-7, 1 / 3, 7.0, 0.001]
)
def test_format_duration_round_trips(seconds: float) -> None:
    text = format_duration(seconds)
    assert parse_slo(f"x: e2e<={text}").classes["x"].constraints[0].limit_s == seconds


def test_format_duration_is_readable() -> None:
    assert [format_duration(x) for x in (1.0, 1.5, 0.1, 0.05, 0.00025, 120.0, 90.0)] == [
        "1s", "1.5s", "100ms", "50ms", "250us", "2min", "90s"]


def test_text_round_trip() -> None:
    spec = ("chatbot: ttft<=1.5s, tpot<=100ms, attain>=99%; foo: deadline<=1s+100ms/tok, "
            "e2e<=2min, itl<=333ms; bar: ttfa<=250us, attain>=0.123456")
    s = parse_slo(spec)
    again = parse_slo(s.to_text())
    assert again == s
    assert s.classes["chatbot"].text == "ttft<=1.5s, tpot<=100ms, attain>=99%"
    assert "foo: deadline<=1s+100ms/tok, e2e<=2min, itl<=333ms, attain>=90%" in s.to_text()
    assert parse_slo(default_slos().to_text()) == default_slos()


def test_dict_round_trip() -> None:
    s = parse_slo("chatbot: ttft<=700ms, attain>=95%; x: deadline<=1s+20ms/tok")
    d = json.loads(json.dumps(s.to_dict()))
    assert d["classes"]["chatbot"] == {
        "constraints": [{"metric": "ttft", "limit_s": 0.7}], "attain": 0.95,
        "text": "ttft<=700ms, attain>=95%"}
    assert d["classes"]["x"]["constraints"] == [
        {"metric": "deadline", "limit_s": 1.0, "per_token_s": 0.02}]
    assert SLOSet.from_dict(d) == s


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("chatbot ttft<=1s", "missing ':'"),
        ("chatbot: ttft<1s", "needs '<='"),
        ("chatbot: ttft<=fast", "not a duration"),
        ("chatbot: ttft<=-1s", "negative"),
        ("chatbot: latency<=1s", "unknown metric 'latency'"),
        ("chatbot: attain>=150%", "outside 0%..100%"),
        (": ttft<=1s", "empty class name"),
        ("chatbot: ttft<=1s; coding: tpot<=1s; chatbot: tpot<=1s", "appears twice"),
        ("chatbot: ttft<=1", "add a unit: 100ms or 1s"),
        ("chatbot: ttft<=100", "add a unit: 100ms or 1s"),
        ("chatbot: ttft<=0s", "must be positive"),
        ("chatbot: ttft<=1h", "unknown unit 'h'"),
        ("chatbot: ttft>=1s", "needs '<='"),
        ("chatbot: ttft 1s", "missing '<='"),
        ("chatbot: ttft<=", "missing value"),
        ("chatbot: attain<=90%", "needs '>='"),
        ("chatbot: ttft<=1s, attain>=99", "not a fraction"),
        ("chatbot: ttft<=1s, attain>=-1%", "outside"),
        ("chatbot: ttft<=1s, attain>=high", "not an attainment target"),
        ("chatbot:", "has no constraints"),
        ("chatbot: ttft<=1s,,tpot<=1s", "empty constraint"),
        ("chatbot: ttft<=1s,", "trailing ','"),
        ("chatbot: attain>=95%", "only an attainment target"),
        ("chatbot: ttft<=1s, ttft<=2s", "given twice"),
        ("chatbot: deadline<=1s+100ms", "per-token deadline"),
        ("chatbot: deadline<=1s+fast/tok", "not a duration"),
        ("chat bot: ttft<=1s", "contains spaces"),
        ("chatbot: 1s<=ttft", "expected METRIC<=DURATION"),
        ("chatbot: ttft<=1s;\n coding:\n ttft<=\n2", "add a unit"),
    ],
)
def test_malformed_specs_raise_one_line(spec: str, needle: str) -> None:
    with pytest.raises(UserError) as info:
        parse_slo(spec, source="--slo")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("--slo: ")
    assert needle in msg
    assert "at character" in msg


def test_error_quotes_fragment_and_position() -> None:
    with pytest.raises(UserError) as info:
        parse_slo("chatbot: ttft<=1s, tpot<100ms")
    msg = str(info.value)
    assert "'tpot<100ms'" in msg
    assert "at character 20 " in msg  # 1-based position of 't' in 'tpot'


def test_unknown_metric_lists_known_and_suggests() -> None:
    with pytest.raises(UserError) as info:
        parse_slo("chatbot: tbot<=1s")
    msg = str(info.value)
    assert "did you mean 'tpot'?" in msg
    for m in ("ttft", "tpot", "itl", "e2e", "ttfa", "think_tpot", "answer_tpot", "deadline",
              "attain"):
        assert m in msg


def test_duplicate_names_position() -> None:
    with pytest.raises(UserError) as info:
        parse_slo("a: ttft<=1s; a: tpot<=1s")
    assert "first at character 1" in str(info.value)
    assert "at character 14 " in str(info.value)


def test_check_classes() -> None:
    s = parse_slo("chatbt: ttft<=1s; translation: ttft<=2s")
    with pytest.raises(UserError) as info:
        s.check_classes(["chatbot", "translation"])
    msg = str(info.value)
    assert "'chatbt'" in msg and "did you mean 'chatbot'?" in msg and "\n" not in msg
    # Built-in classes and classes present in the workload are fine.
    parse_slo("coding: ttft<=1s; translation: ttft<=2s").check_classes(["translation"])
    default_slos().check_classes([])
    with pytest.raises(UserError):
        parse_slo("translation: ttft<=2s").check_classes(["chatbot"])


# --------------------------------------------------------------------------- percentiles


def test_percentiles_match_numpy() -> None:
    rng = np.random.default_rng(7)
    x = rng.lognormal(size=1001)
    with_nan = np.r_[x, [np.nan] * 5]
    p = percentiles(with_nan)
    assert set(p) == {"p50", "p90", "p95", "p99", "max", "mean", "count"}
    for q in (50, 90, 95, 99):
        assert p[f"p{q}"] == float(np.percentile(x, q))
    assert p["max"] == float(x.max())
    assert p["mean"] == float(x.mean())
    assert p["count"] == 1001
    assert all(type(v) is float for k, v in p.items() if k != "count")


def test_percentiles_small_and_custom() -> None:
    assert percentiles([1.0, 2.0, 3.0, 4.0], qs=(50, 99.9)) == {
        "p50": 2.5, "p99.9": float(np.percentile([1, 2, 3, 4], 99.9)), "max": 4.0,
        "mean": 2.5, "count": 4}
    p = percentiles(np.array([0.0, 10.0]))
    assert p["p90"] == 9.0 and p["p50"] == 5.0


def test_percentiles_empty() -> None:
    for values in ([], [np.nan, np.nan]):
        p = percentiles(np.asarray(values))
        assert p["count"] == 0
        assert all(np.isnan(p[k]) for k in ("p50", "p90", "p95", "p99", "max", "mean"))


def test_describe() -> None:
    d = describe([1.0, 3.0, np.nan])
    assert d["min"] == 1.0 and d["std"] == 1.0 and d["p50"] == 2.0 and d["count"] == 2
