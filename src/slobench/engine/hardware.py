"""GPU catalog: the hardware numbers the step-time model (engine/costmodel.py) needs.

Every number is the vendor datasheet's *dense* figure (no structured sparsity), with the source
next to it. Datasheets give tensor-core peaks "with sparsity" and mark them with an asterisk; the
dense figure is half of that. Memory sizes are the datasheets' "GB" figures, which for HBM parts
are binary (80 GB = 5 stacks x 16 GiB), so they are stored as GiB. Interconnect bandwidth is stored
*per direction* per GPU (datasheets quote the bidirectional total: NVLink 4's "900 GB/s" is 450 GB/s
each way). All-reduce latencies are our estimates (software + hardware), not datasheet figures.

Look a GPU up with :func:`get_gpu` (forgiving names: ``h100``, ``H100-SXM``, ``a100-80gb``), load
your own with :func:`load_gpu_file` (JSON or TOML), or do either with :func:`resolve_gpu`.
See docs/engine-model.md.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from slobench import tomlread
from slobench.errors import UserError, did_you_mean

__all__ = [
    "GPUS",
    "GpuSpec",
    "get_gpu",
    "gpu_from_dict",
    "gpu_names",
    "load_gpu_file",
    "read_config_file",
    "resolve_gpu",
]

TERA = 1e12
GIGA = 1e9
GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One accelerator. Units are in the field names; FLOP/s are dense tensor-core peaks."""

    name: str  # canonical catalog name, e.g. "h100-sxm"
    label: str  # human name, e.g. "NVIDIA H100 SXM5 80GB"
    bf16_tflops: float  # dense BF16 tensor-core peak, TFLOP/s
    fp8_tflops: float | None  # dense FP8 tensor-core peak, TFLOP/s; None: no FP8 tensor cores
    hbm_tb_s: float  # memory bandwidth, TB/s (10^12 bytes/s)
    memory_gib: float  # device memory, GiB
    interconnect: str  # what tensor parallelism talks over, e.g. "NVLink 4"
    interconnect_gb_s: float  # per GPU, per direction, all links together, GB/s (10^9 bytes/s)
    interconnect_links: int = 0  # >0: a full mesh of this many point-to-point links (no switch)
    allreduce_latency_us: float = 10.0  # fixed cost of one small all-reduce (estimate)
    source: str = ""

    # -- derived, in SI units
    @property
    def bf16_flops(self) -> float:
        return self.bf16_tflops * TERA

    @property
    def fp8_flops(self) -> float:
        """FP8 peak; GPUs without FP8 tensor cores run FP8 weights at the BF16 rate."""
        return (self.fp8_tflops or self.bf16_tflops) * TERA

    @property
    def hbm_bytes_s(self) -> float:
        return self.hbm_tb_s * TERA

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * GIB

    def interconnect_bytes_s(self, tp: int) -> float:
        """Per-direction bandwidth one GPU has towards the other ``tp - 1`` GPUs of its group.

        Behind a switch (NVLink/NVSwitch, PCIe) every GPU gets its full bandwidth; in a full mesh
        (AMD Infinity Fabric) a group of ``tp`` GPUs uses only ``tp - 1`` of the links.
        """
        bw = self.interconnect_gb_s * GIGA
        if self.interconnect_links > 0 and tp > 1:
            bw *= min(tp - 1, self.interconnect_links) / self.interconnect_links
        return bw

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the catalog
# Sources (vendor datasheets; "*" figures in them are with sparsity, we store half):
#   [H100]  NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100/)
#   [H200]  NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200/)
#   [A100]  NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/a100/)
#   [L40S]  NVIDIA L40S datasheet (nvidia.com/en-us/data-center/l40s/)
#   [L4]    NVIDIA L4 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/l4/)
#   [B200]  NVIDIA DGX B200 / HGX B200 datasheet (8 GPUs per system; per-GPU = system / 8)
#   [MI300X] AMD Instinct MI300X accelerator data sheet (amd.com/en/products/accelerators/instinct)

_CATALOG: tuple[GpuSpec, ...] = (
    GpuSpec(
        name="h100-sxm",
        label="NVIDIA H100 SXM5 80GB",
        bf16_tflops=989.4,  # [H100] BF16 Tensor Core 1,979 TFLOPS* (sparse) -> 989.4 dense
        fp8_tflops=1978.9,  # [H100] FP8 Tensor Core 3,958 TFLOPS* (sparse) -> 1,979 dense
        hbm_tb_s=3.35,  # [H100] GPU memory bandwidth 3.35 TB/s (HBM3)
        memory_gib=80,  # [H100] GPU memory 80 GB
        interconnect="NVLink 4",
        interconnect_gb_s=450,  # [H100] NVLink 900 GB/s (bidirectional) -> 450 GB/s each way
        allreduce_latency_us=8.0,  # estimate: one-shot custom all-reduce over NVLink
        source="NVIDIA H100 Tensor Core GPU datasheet (SXM column)",
    ),
    GpuSpec(
        name="h200",
        label="NVIDIA H200 SXM 141GB",
        bf16_tflops=989.4,  # [H200] BF16 Tensor Core 1,979 TFLOPS* (sparse) -> 989.4 dense
        fp8_tflops=1978.9,  # [H200] FP8 Tensor Core 3,958 TFLOPS* (sparse) -> 1,979 dense
        hbm_tb_s=4.8,  # [H200] GPU memory bandwidth 4.8 TB/s (HBM3e)
        memory_gib=141,  # [H200] GPU memory 141 GB
        interconnect="NVLink 4",
        interconnect_gb_s=450,  # [H200] NVLink 900 GB/s (bidirectional) -> 450 GB/s each way
        allreduce_latency_us=8.0,  # estimate, as H100
        source="NVIDIA H200 Tensor Core GPU datasheet (SXM column)",
    ),
    GpuSpec(
        name="a100-80gb",
        label="NVIDIA A100 SXM4 80GB",
        bf16_tflops=312,  # [A100] BF16 Tensor Core 312 TFLOPS (624* sparse)
        fp8_tflops=None,  # [A100] no FP8 tensor cores (FP8 weights run weight-only at BF16 rate)
        hbm_tb_s=2.039,  # [A100] GPU memory bandwidth 2,039 GB/s (80GB HBM2e, SXM)
        memory_gib=80,  # [A100] GPU memory 80 GB HBM2e
        interconnect="NVLink 3",
        interconnect_gb_s=300,  # [A100] NVLink 600 GB/s (bidirectional) -> 300 GB/s each way
        allreduce_latency_us=10.0,  # estimate
        source="NVIDIA A100 Tensor Core GPU datasheet (80GB SXM column)",
    ),
    GpuSpec(
        name="a100-40gb",
        label="NVIDIA A100 SXM4 40GB",
        bf16_tflops=312,  # [A100] BF16 Tensor Core 312 TFLOPS (624* sparse)
        fp8_tflops=None,  # [A100] no FP8 tensor cores
        hbm_tb_s=1.555,  # [A100] GPU memory bandwidth 1,555 GB/s (40GB HBM2)
        memory_gib=40,  # [A100] GPU memory 40 GB HBM2
        interconnect="NVLink 3",
        interconnect_gb_s=300,  # [A100] NVLink 600 GB/s (bidirectional) -> 300 GB/s each way
        allreduce_latency_us=10.0,  # estimate
        source="NVIDIA A100 Tensor Core GPU datasheet (40GB SXM column)",
    ),
    GpuSpec(
        name="l40s",
        label="NVIDIA L40S 48GB",
        bf16_tflops=362.05,  # [L40S] BF16 Tensor Core 362.05 | 733* TFLOPS
        fp8_tflops=733,  # [L40S] FP8 Tensor Core 733 | 1,466* TFLOPS
        hbm_tb_s=0.864,  # [L40S] memory bandwidth 864 GB/s (GDDR6)
        memory_gib=48,  # [L40S] GPU memory 48 GB GDDR6 with ECC
        interconnect="PCIe Gen4 x16",
        interconnect_gb_s=32,  # [L40S] PCIe Gen4 x16: 64 GB/s bidirectional -> 32 each way
        allreduce_latency_us=25.0,  # estimate: NCCL over PCIe, no NVLink
        source="NVIDIA L40S GPU datasheet",
    ),
    GpuSpec(
        name="l4",
        label="NVIDIA L4 24GB",
        bf16_tflops=121,  # [L4] BF16 Tensor Core 242 TFLOPS* (sparse) -> 121 dense
        fp8_tflops=242.5,  # [L4] FP8 Tensor Core 485 TFLOPS* (sparse) -> 242.5 dense
        hbm_tb_s=0.3,  # [L4] GPU memory bandwidth 300 GB/s (GDDR6)
        memory_gib=24,  # [L4] GPU memory 24 GB
        interconnect="PCIe Gen4 x16",
        interconnect_gb_s=32,  # [L4] PCIe Gen4 x16: 64 GB/s bidirectional -> 32 each way
        allreduce_latency_us=25.0,  # estimate: NCCL over PCIe
        source="NVIDIA L4 Tensor Core GPU datasheet",
    ),
    GpuSpec(
        name="b200",
        label="NVIDIA B200 180GB",
        bf16_tflops=2250,  # [B200] HGX B200 FP16/BF16 36 PFLOPS* per 8 GPUs -> 2.25 PF dense each
        fp8_tflops=4500,  # [B200] HGX B200 FP8 72 PFLOPS* per 8 GPUs -> 4.5 PF dense each
        hbm_tb_s=8.0,  # [B200] DGX B200 64 TB/s HBM3e per 8 GPUs -> 8 TB/s each
        memory_gib=180,  # [B200] DGX B200 1,440 GB GPU memory per 8 GPUs -> 180 GB each
        interconnect="NVLink 5",
        interconnect_gb_s=900,  # [B200] NVLink 5 1.8 TB/s per GPU (bidirectional) -> 900 each way
        allreduce_latency_us=8.0,  # estimate, as H100
        source="NVIDIA DGX B200 / HGX B200 datasheet (per-GPU = system figure / 8)",
    ),
    GpuSpec(
        name="mi300x",
        label="AMD Instinct MI300X 192GB",
        bf16_tflops=1307.4,  # [MI300X] peak BF16 1,307.4 TFLOPS dense (2,614.9 with sparsity)
        fp8_tflops=2614.9,  # [MI300X] peak FP8 2,614.9 TFLOPS dense (5,229.8 with sparsity)
        hbm_tb_s=5.3,  # [MI300X] peak memory bandwidth 5.3 TB/s (HBM3)
        memory_gib=192,  # [MI300X] memory 192 GB HBM3
        interconnect="Infinity Fabric",
        # [MI300X] 7 Infinity Fabric links, 128 GB/s peak each (896 GB/s aggregate, bidirectional)
        # -> 448 GB/s each way over all 7 links of the 8-GPU full mesh
        interconnect_gb_s=448,
        interconnect_links=7,
        allreduce_latency_us=12.0,  # estimate: RCCL over the xGMI mesh
        source="AMD Instinct MI300X accelerator data sheet",
    ),
)

GPUS: dict[str, GpuSpec] = {g.name: g for g in _CATALOG}

# Extra spellings (after normalisation: lower case, letters and digits only).
_ALIASES: dict[str, str] = {
    "h100": "h100-sxm",
    "h100sxm5": "h100-sxm",
    "h10080gb": "h100-sxm",
    "h100sxm80gb": "h100-sxm",
    "h100sxm580gb": "h100-sxm",
    "h100hbm3": "h100-sxm",
    "h10080gbhbm3": "h100-sxm",
    "h200sxm": "h200",
    "h200141gb": "h200",
    "h200sxm141gb": "h200",
    "a100": "a100-80gb",
    "a10080": "a100-80gb",
    "a100sxm": "a100-80gb",
    "a100sxm80gb": "a100-80gb",
    "a100sxm480gb": "a100-80gb",
    "a10040": "a100-40gb",
    "a100sxm40gb": "a100-40gb",
    "a100sxm440gb": "a100-40gb",
    "l40s48gb": "l40s",
    "l424gb": "l4",
    "b200180gb": "b200",
    "dgxb200": "b200",
    "hgxb200": "b200",
    "mi300": "mi300x",
    "instinctmi300x": "mi300x",
    "amdmi300x": "mi300x",
}


def _norm(name: str) -> str:
    text = name.strip().lower()
    for prefix in ("nvidia ", "nvidia-", "nvidia_", "amd ", "amd-", "amd_"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return re.sub(r"[^a-z0-9]", "", text)


_INDEX: dict[str, str] = {_norm(n): n for n in GPUS} | _ALIASES


def gpu_names() -> list[str]:
    """The catalog's canonical names, sorted."""
    return sorted(GPUS)


def get_gpu(name: str) -> GpuSpec:
    """A catalog GPU by a forgiving name (``h100``, ``H100-SXM``, ``nvidia a100 80gb``)."""
    key = _norm(name)
    canonical = _INDEX.get(key)
    if canonical is None:
        hint = did_you_mean(key, _INDEX, cutoff=0.6)
        raise UserError(
            f"unknown GPU '{name}'; {hint}known GPUs: {', '.join(gpu_names())}; "
            "or give a .json/.toml file describing yours (see docs/engine-model.md)"
        )
    return GPUS[canonical]


# --------------------------------------------------------------------------- files


def read_config_file(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON or TOML file's top-level table (by extension; ``.toml`` is TOML, else JSON).

    Plain data only: nothing in the file is executed. Errors name the file and say what to fix.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} file '{p}' does not exist (or is not a file); check the path")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} file '{p}' cannot be read: {exc}") from None
    if p.suffix.lower() == ".toml":
        try:
            data: Any = tomlread.loads(text)
        except tomlread.TOMLDecodeError as exc:
            raise UserError(f"{what} file '{p}' is not valid TOML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{what} file '{p}' is not valid JSON: {exc.msg} at line {exc.lineno} "
                f"column {exc.colno}"
            ) from None
    if not isinstance(data, dict):
        raise UserError(f"{what} file '{p}' must hold one object/table of fields, "
                        f"not {type(data).__name__}")
    return data


_REQUIRED = ("bf16_tflops", "hbm_tb_s", "memory_gib", "interconnect_gb_s")
_FLOAT_FIELDS = ("bf16_tflops", "fp8_tflops", "hbm_tb_s", "memory_gib", "interconnect_gb_s",
                 "allreduce_latency_us")


def gpu_from_dict(data: dict[str, Any], where: str) -> GpuSpec:
    """A GpuSpec from a dict of its fields (as in a GPU file); ``where`` names it in errors."""
    valid = [f.name for f in fields(GpuSpec)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise UserError(f"{where}: unknown field '{unknown[0]}'; valid fields: {', '.join(valid)}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise UserError(f"{where}: missing field '{missing[0]}'; a GPU needs "
                        f"{', '.join(_REQUIRED)} (see docs/engine-model.md)")
    values: dict[str, Any] = dict(data)
    for key in _FLOAT_FIELDS:
        if key not in values or (key == "fp8_tflops" and values[key] is None):
            continue
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            raise UserError(f"{where}: field '{key}' must be a positive number, not {v!r}")
        values[key] = float(v)
    links = values.get("interconnect_links", 0)
    if isinstance(links, bool) or not isinstance(links, int) or links < 0:
        raise UserError(f"{where}: field 'interconnect_links' must be a whole number >= 0, "
                        f"not {links!r}")
    values.setdefault("fp8_tflops", None)
    values.setdefault("name", "custom-gpu")
    values.setdefault("label", str(values["name"]))
    values.setdefault("interconnect", "custom")
    values.setdefault("source", where)
    for key in ("name", "label", "interconnect", "source"):
        if not isinstance(values[key], str):
            raise UserError(f"{where}: field '{key}' must be a string, not {values[key]!r}")
    return GpuSpec(**values)


def load_gpu_file(path: str | Path) -> GpuSpec:
    """Your own GPU from a JSON or TOML file with GpuSpec's fields.

    Required: ``bf16_tflops``, ``hbm_tb_s``, ``memory_gib``, ``interconnect_gb_s``; optional:
    ``name``, ``label``, ``fp8_tflops``, ``interconnect``, ``interconnect_links``,
    ``allreduce_latency_us``, ``source``.
    """
    return gpu_from_dict(read_config_file(path, "GPU"), f"GPU file '{path}'")


def resolve_gpu(spec: str | Path | GpuSpec) -> GpuSpec:
    """A GpuSpec from a catalog name or a path to a .json/.toml GPU file."""
    if isinstance(spec, GpuSpec):
        return spec
    text = str(spec)
    if text.lower().endswith((".json", ".toml")) or Path(text).is_file():
        return load_gpu_file(text)
    return get_gpu(text)
