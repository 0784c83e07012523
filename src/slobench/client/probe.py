"""Who is serving: the engine, its version and its models, from what the server itself exposes.

At the start of a live run ``identify_server`` asks the target, with short timeouts, for
``GET /v1/models`` (model ids, ``max_model_len``, ``owned_by``) and ``GET /metrics`` (Prometheus
text: the metric-name prefixes name the engine), then, once the engine is known, its own version
endpoint (vLLM ``/version``, TGI ``/info``, SGLang ``/get_server_info``, llama.cpp ``/props``).
Nothing here can fail a run: every error becomes a note in the result. See docs/catalog.md.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from slobench.client.backends.presets import DETECTION_ORDER, PRESETS

# Metric-name prefixes, owners and version endpoints come from the engine presets (one place);
# Triton is recognized but has no preset (its OpenAI frontend is not one slobench has checked).
METRIC_PREFIXES: tuple[tuple[str, str], ...] = (
    *((p.metric_prefix or "", p.engine) for p in DETECTION_ORDER),
    ("nv_inference_", "triton"),
)

# GET /v1/models "owned_by" values that name the engine ("slobench": the built-in servers).
OWNERS = {**{o: p.engine for p in PRESETS.values() for o in p.owned_by}, "slobench": "slobench"}

# The engine's own version endpoint and the JSON fields that may hold its version.
VERSION_ENDPOINTS: dict[str, tuple[str, tuple[str, ...]]] = {
    p.engine: (p.version_endpoint, p.version_fields)
    for p in PRESETS.values() if p.version_endpoint}

# Model-entry fields worth keeping (beyond the id).
MODEL_FIELDS = ("owned_by", "max_model_len", "root", "parent")

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:.]*)(?:\{(.*)\})?\s+\S+")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_VERSION_LABELS = ("version", "vllm_version", "build_version", "engine_version")
MAX_BODY = 4 << 20  # a /metrics page larger than this is cut (histograms of many models)


def clean_url(url: str) -> str:
    """``url`` without user:password@, query string or fragment (where API tokens hide)."""
    parts = urlsplit(url.strip())
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _get(url: str, headers: dict[str, str], timeout_s: float) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, resp.read(MAX_BODY)
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def parse_models(body: bytes) -> list[dict[str, Any]]:
    """The entries of an OpenAI ``/v1/models`` answer: id plus the fields worth keeping."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    items = data.get("data") if isinstance(data, dict) else None
    out = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("id") is not None:
            entry = {"id": str(item["id"])}
            entry.update({k: item[k] for k in MODEL_FIELDS if item.get(k) is not None})
            out.append(entry)
    return out


def parse_metrics(text: str) -> dict[str, Any]:
    """What a Prometheus text page says about the engine: the detected engine (by metric-name
    prefix), a version where an ``*info`` metric carries one, and the labels of the engine's
    ``cache_config_info`` (vLLM's block size, GPU memory utilization, ...)."""
    names: set[str] = set()
    info: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        name = m.group(1)
        names.add(name)
        if name.endswith("info") and m.group(2) and name not in info:
            info[name] = {k: v.replace('\\"', '"') for k, v in _LABEL.findall(m.group(2))}
    counts = {engine: 0 for _, engine in METRIC_PREFIXES}
    for name in names:
        for prefix, engine in METRIC_PREFIXES:
            if name.startswith(prefix):
                counts[engine] += 1
                break
    engine = next((e for _, e in METRIC_PREFIXES if counts[e]), None)
    prefixes = sorted(p for p, e in METRIC_PREFIXES if counts[e])
    version = None
    config: dict[str, str] = {}
    own = tuple(p for p, e in METRIC_PREFIXES if e == engine or
                (engine == "slobench-emulator" and e == "vllm"))
    for name, labels in info.items():
        if not name.startswith(own):
            continue  # python_info, process_* and the like describe the exporter, not the engine
        if version is None:
            version = next((labels[k] for k in _VERSION_LABELS if labels.get(k)), None)
        if name.endswith("cache_config_info"):
            config = labels
    return {"engine": engine, "version": version, "names": len(names),
            "prefixes": prefixes, "cache_config": config}


def identify_server(base_url: str, headers: dict[str, str] | None = None, *,
                    budget_s: float = 4.0, timeout_s: float = 2.0) -> dict[str, Any]:
    """What the server at ``base_url`` (no /v1) says about itself; never raises.

    Returns ``{"url", "engine", "engine_version", "detected_from", "models", "metrics",
    "cache_config", "errors"}``; unknown values are None and ``errors`` names each endpoint that
    did not answer usefully. ``headers`` (authorization) are sent but never returned.
    """
    headers = {k: v for k, v in (headers or {}).items() if k.lower() != "content-type"}
    base = base_url.rstrip("/")
    deadline = time.monotonic() + budget_s
    errors: dict[str, str] = {}

    def fetch(path: str) -> bytes | None:
        left = deadline - time.monotonic()
        if left <= 0.05:
            errors[path] = "skipped (probe time budget spent)"
            return None
        try:
            status, body = _get(base + path, headers, min(timeout_s, left))
        except (OSError, ValueError) as exc:  # refused, timed out, reset, bad URL
            errors[path] = f"{type(exc).__name__}: {exc}"[:200]
            return None
        if status != 200:
            errors[path] = f"HTTP {status}"
            return None
        return body

    result: dict[str, Any] = {"url": clean_url(base), "engine": None, "engine_version": None,
                              "detected_from": None, "models": [], "metrics": None,
                              "cache_config": {}, "errors": errors}
    body = fetch("/v1/models")
    if body is not None:
        result["models"] = parse_models(body)
    body = fetch("/metrics")
    if body is not None:
        metrics = parse_metrics(body.decode("utf-8", "replace"))
        result["cache_config"] = metrics.pop("cache_config")
        result["metrics"] = {"names": metrics["names"], "prefixes": metrics["prefixes"]}
        if metrics["engine"]:
            result["engine"], result["detected_from"] = metrics["engine"], "metrics"
            result["engine_version"] = metrics["version"]
    if result["engine"] is None:
        owners = {str(m.get("owned_by", "")).lower() for m in result["models"]}
        found = sorted(OWNERS[o] for o in owners if o in OWNERS)
        if found:
            result["engine"], result["detected_from"] = found[0], "models"
    endpoint = VERSION_ENDPOINTS.get(result["engine"] or "")
    if endpoint and result["engine_version"] is None:
        body = fetch(endpoint[0])
        if body is not None:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                data = None
            if isinstance(data, dict):
                result["engine_version"] = next(
                    (str(data[k]) for k in endpoint[1] if data.get(k) not in (None, "")), None)
    return result
