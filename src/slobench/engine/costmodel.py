"""Roofline step-time model: how long one engine step takes on a GPU group, and how much KV fits.

For a step of shape ``s`` (engine/core.py :class:`StepShape`) on ``tp`` GPUs::

    tokens   = s.prefill_tokens + s.decode_tokens
    flops    = 2 * active layer-matmul params * tokens          (weights, per new token)
             + 2 * vocab * hidden * s.num_seqs                   (LM head, a row per sequence)
             + 4 * layers * heads * head_dim * attention pairs   (QK^T and PV)
      attention pairs = s.prefill_attn_pairs + s.kv_read_tokens + s.decode_tokens
    compute  = flops / (peak FLOP/s * tp * efficiency)
      efficiency blends decode_compute_efficiency .. prefill_compute_efficiency by the share of
      prefill tokens in the step
    memory   = weight bytes read / (HBM B/s * tp * weight_bandwidth_efficiency)
             + KV bytes read and written / (HBM B/s * tp * kv_bandwidth_efficiency)
      weight bytes read: dense weights every step; MoE experts only as far as the step's tokens
      touch them (expected fraction 1 - (1 - top_k/experts)^tokens: top-k at batch 1, all of
      them from a few dozen tokens on)
    step     = max(compute, memory) + step_overhead_s + layers * layer_overhead_s
             + num_seqs * seq_overhead_s + all-reduce (tp > 1)
      all-reduce = 2 per layer, each of tokens * hidden * 2 bytes, ring algorithm:
                   latency + 2 (tp-1)/tp * bytes / (interconnect B/s * allreduce_efficiency)

``step_time`` is a handful of float operations (every constant is folded in ``__init__``): the
simulator calls it once per engine step and must run >= 1000x faster than real time.

Latency that does not occupy the GPU (HTTP, chat template, tokenization, detokenization: the
serving frontend) is not part of a step: :meth:`RooflineCostModel.admission_delay_s` gives it
per request, for the drivers to add between a request's arrival and its admission.

Calibration and sources: docs/engine-model.md.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slobench.engine.core import StepShape
from slobench.engine.hardware import GIB, GpuSpec, read_config_file, resolve_gpu
from slobench.engine.models import ModelSpec, canonical_dtype, dtype_bytes, resolve_model
from slobench.errors import UserError

__all__ = [
    "ACTIVATION_BYTES",
    "MIN_KV_TOKENS",
    "CostFactors",
    "RooflineCostModel",
    "load_factors",
    "prefill_shape",
]

ACTIVATION_BYTES = 2.0  # bf16 activations travel in the tensor-parallel all-reduces
MIN_KV_TOKENS = 1024  # a deployment that leaves less KV cache than this does not "fit"


class CostFactors(BaseModel):
    """Every efficiency and overhead of the step-time model (defaults: docs/engine-model.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Fraction of the dense tensor-core peak reached by the matmuls and attention of a step made
    # only of prefill tokens / only of decode tokens (mixed steps blend the two by token share).
    prefill_compute_efficiency: float = Field(0.6, gt=0, le=1)
    decode_compute_efficiency: float = Field(0.4, gt=0, le=1)
    # Fraction of the HBM bandwidth reached when streaming weights (GEMV/GEMM) and the KV cache
    # (paged attention kernels reach less: scattered blocks, short rows).
    weight_bandwidth_efficiency: float = Field(0.85, gt=0, le=1)
    kv_bandwidth_efficiency: float = Field(0.7, gt=0, le=1)
    # Fixed costs that do not overlap the GPU work: per step (scheduler, sampling, launching),
    # per layer per step (kernel launch gaps), per sequence in the step (input preparation,
    # sampling and output processing per sequence).
    step_overhead_s: float = Field(4e-4, ge=0)
    layer_overhead_s: float = Field(8e-6, ge=0)
    seq_overhead_s: float = Field(2.5e-5, ge=0)
    # Tensor parallelism: fraction of the interconnect bandwidth an all-reduce reaches, and the
    # fixed latency of one all-reduce (None: the GPU catalog's estimate for its interconnect).
    allreduce_efficiency: float = Field(0.7, gt=0, le=1)
    allreduce_latency_s: float | None = Field(None, ge=0)
    # Serving frontend, per request, outside the engine steps (see admission_delay_s).
    frontend_latency_s: float = Field(0.06, ge=0)
    frontend_s_per_prompt_token: float = Field(1e-6, ge=0)
    # Memory: the share of each GPU's memory the engine may use (vLLM's gpu_memory_utilization)
    # and what it keeps for activations, CUDA graphs and workspaces besides weights and KV.
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    reserve_gib: float = Field(1.5, ge=0)

    @classmethod
    def field_names(cls) -> list[str]:
        return list(cls.model_fields)


def load_factors(path: str | Path, base: CostFactors | None = None) -> CostFactors:
    """CostFactors from a JSON or TOML file of overrides (any subset of the fields).

    Fields not in the file keep their value in ``base`` (default: the calibrated defaults).
    An unknown key or a bad value is a UserError naming the file and the key.
    """
    data = read_config_file(path, "cost-factors")
    where = f"cost-factors file '{path}'"
    valid = CostFactors.field_names()
    for key in data:
        if key not in valid:
            raise UserError(f"{where}: unknown factor '{key}'; valid factors: {', '.join(valid)}")
    merged = {**(base or CostFactors()).model_dump(), **data}
    try:
        return CostFactors(**merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err.get("loc", ())) or "?"
        raise UserError(f"{where}: factor '{key}' = {err.get('input')!r}: {err.get('msg')}"
                        ) from None


class RooflineCostModel:
    """StepCostModel (engine/core.py) for ``model`` on ``tp`` x ``gpu`` (names, files or specs).

    ``weight_dtype``: bf16, fp16, fp8, int8 or int4 (the layers' linear weights; fp8 weights run
    at the GPU's FP8 rate where it has one). ``kv_dtype``: bf16, fp16 or fp8.
    Raises UserError when the weights do not fit (saying how much memory is missing and which
    tensor parallelism or weight dtype would fit).
    """

    __slots__ = (
        "_c_pair", "_c_seq", "_c_tok", "_capacity", "_eff_d", "_eff_span", "_fixed",
        "_m_expert", "_m_fixed", "_m_kv_read", "_m_kv_write", "_moe_keep", "_per_seq",
        "_per_tok", "allreduce_latency_s", "factors", "gpu", "kv_bytes_per_token",
        "kv_dtype", "kv_replication", "model", "tp", "weight_bytes", "weight_dtype",
    )

    def __init__(
        self,
        model: ModelSpec | str | Path,
        gpu: GpuSpec | str | Path,
        tp: int = 1,
        weight_dtype: str = "bf16",
        kv_dtype: str = "bf16",
        factors: CostFactors | None = None,
    ) -> None:
        self.model = m = resolve_model(model)
        self.gpu = g = resolve_gpu(gpu)
        self.factors = f = factors if factors is not None else CostFactors()
        self.weight_dtype = canonical_dtype(weight_dtype, "weight dtype")
        self.kv_dtype = canonical_dtype(kv_dtype, "KV dtype")
        if self.kv_dtype not in ("bf16", "fp16", "fp8", "fp32"):
            raise UserError(f"KV dtype '{kv_dtype}' is not supported; use bf16, fp16 or fp8")
        self.tp = tp = _check_tp(m, tp)

        # -- memory footprint
        self.weight_bytes = m.weight_bytes(self.weight_dtype)
        self.kv_replication = max(1, tp // m.kv_heads)  # tp > KV heads: heads are replicated
        self.kv_bytes_per_token = m.kv_bytes_per_token(self.kv_dtype)
        self._capacity = self._fit_or_raise()

        # -- compute: seconds at 100% of peak, per unit (divided by the blended efficiency)
        w_rate = (g.fp8_flops if self.weight_dtype == "fp8" else g.bf16_flops) * tp
        a_rate = g.bf16_flops * tp
        self._c_tok = 2.0 * m.active_layer_matmul_params / w_rate
        self._c_seq = 2.0 * m.lm_head_params / a_rate  # LM head kept in bf16
        self._c_pair = 4.0 * m.layers * m.heads * m.head_dim / a_rate
        self._eff_d = f.decode_compute_efficiency
        self._eff_span = f.prefill_compute_efficiency - f.decode_compute_efficiency

        # -- memory traffic: seconds per byte class
        w_bw = g.hbm_bytes_s * tp * f.weight_bandwidth_efficiency
        kv_bw = g.hbm_bytes_s * tp * f.kv_bandwidth_efficiency
        wb = dtype_bytes(self.weight_dtype)
        expert_bytes = m.routed_expert_params * wb
        # weights read every step: everything but the input embedding table (only looked up)
        # and the routed experts (read as far as the step's tokens touch them)
        always = self.weight_bytes - expert_bytes
        if not m.tied_embeddings:
            always -= m.embedding_params * 2.0
        self._m_fixed = always / w_bw
        self._m_expert = expert_bytes / w_bw
        self._moe_keep = 1.0 - m.top_k / m.experts if m.is_moe else 1.0
        kv_tok = self.kv_bytes_per_token * self.kv_replication / kv_bw
        self._m_kv_read = kv_tok
        self._m_kv_write = kv_tok

        # -- overheads and the tensor-parallel all-reduce
        lat = f.allreduce_latency_s
        self.allreduce_latency_s = g.allreduce_latency_us * 1e-6 if lat is None else lat
        if tp > 1:
            ar_bw = g.interconnect_bytes_s(tp) * f.allreduce_efficiency
            n_ar = 2 * m.layers
            ar_fixed = n_ar * self.allreduce_latency_s
            self._per_tok = n_ar * 2.0 * (tp - 1) / tp * m.hidden * ACTIVATION_BYTES / ar_bw
        else:
            ar_fixed = 0.0
            self._per_tok = 0.0
        self._fixed = f.step_overhead_s + m.layers * f.layer_overhead_s + ar_fixed
        self._per_seq = f.seq_overhead_s

    # ------------------------------------------------------------------ the protocol

    def step_time(self, shape: StepShape) -> float:
        """Seconds one engine step of this shape takes (O(1): a few float operations)."""
        p = shape.prefill_tokens
        n = p + shape.decode_tokens
        if n <= 0:
            return self._fixed + self._per_seq * shape.num_seqs
        kv = shape.kv_read_tokens
        comp = (self._c_tok * n + self._c_seq * shape.num_seqs
                + self._c_pair * (shape.prefill_attn_pairs + kv + shape.decode_tokens)
                ) / (self._eff_d + self._eff_span * p / n)
        mem = self._m_fixed + self._m_kv_read * kv + self._m_kv_write * n
        if self._m_expert:
            mem += self._m_expert * (1.0 - self._moe_keep ** n)
        return ((comp if comp > mem else mem) + self._fixed + self._per_seq * shape.num_seqs
                + self._per_tok * n)

    def kv_capacity_tokens(self) -> int:
        """Tokens of KV cache that fit across the tp GPUs after weights and the reserve."""
        return self._capacity

    # ------------------------------------------------------------------ helpers for drivers

    def admission_delay_s(self, prompt_tokens: int) -> float:
        """Frontend latency of one request before the engine can schedule it (HTTP, chat
        template, tokenization, hand-off to the engine; and the first chunk's way back).

        It does not occupy the GPU, so it is not part of any step: drivers make a request
        schedulable at ``arrival + admission_delay_s(prompt_tokens)``.
        """
        f = self.factors
        return f.frontend_latency_s + f.frontend_s_per_prompt_token * prompt_tokens

    def decode_step_s(self, batch: int, context: int) -> float:
        """One step of ``batch`` decoding sequences of ``context`` cached tokens each."""
        return self.step_time(StepShape(num_seqs=batch, prefill_tokens=0, decode_tokens=batch,
                                        kv_read_tokens=batch * context, prefill_attn_pairs=0.0))

    def prefill_step_s(self, tokens: int, context: int = 0) -> float:
        """One step that prefills a chunk of ``tokens`` after ``context`` cached tokens."""
        return self.step_time(prefill_shape(tokens, context))

    def ttft_estimate_s(self, prompt_tokens: int, chunk_tokens: int = 8192) -> float:
        """Time to first token of a lone request on an idle engine: the frontend delay plus its
        prefill in chunks of ``chunk_tokens`` (the first token comes out of the last chunk)."""
        if chunk_tokens < 1:
            raise UserError(f"chunk_tokens must be >= 1, not {chunk_tokens}")
        t = self.admission_delay_s(prompt_tokens)
        done = 0
        while done < prompt_tokens:
            c = min(chunk_tokens, prompt_tokens - done)
            t += self.prefill_step_s(c, done)
            done += c
        return t

    def breakdown(self, shape: StepShape) -> dict[str, Any]:
        """The step's parts, computed the long way (FLOPs and bytes): for tests and reports."""
        m, g, f, tp = self.model, self.gpu, self.factors, self.tp
        p, d = shape.prefill_tokens, shape.decode_tokens
        n = p + d
        pairs = shape.prefill_attn_pairs + shape.kv_read_tokens + d
        matmul_flops = 2.0 * m.active_layer_matmul_params * n
        head_flops = 2.0 * m.lm_head_params * shape.num_seqs
        attn_flops = 4.0 * m.layers * m.heads * m.head_dim * pairs
        w_rate = g.fp8_flops if self.weight_dtype == "fp8" else g.bf16_flops
        eff = (f.decode_compute_efficiency + (f.prefill_compute_efficiency
               - f.decode_compute_efficiency) * p / n) if n else 1.0
        compute = (matmul_flops / w_rate + (head_flops + attn_flops) / g.bf16_flops) / (tp * eff)
        wb = dtype_bytes(self.weight_dtype)
        experts = m.routed_expert_params * wb
        touched = (1.0 - (1.0 - m.top_k / m.experts) ** n) if m.is_moe else 0.0
        weights_read = self.weight_bytes - experts + experts * touched
        if not m.tied_embeddings:
            weights_read -= m.embedding_params * 2.0
        kv_bytes = (shape.kv_read_tokens + n) * self.kv_bytes_per_token * self.kv_replication
        memory = (weights_read / f.weight_bandwidth_efficiency
                  + kv_bytes / f.kv_bandwidth_efficiency) / (g.hbm_bytes_s * tp)
        overhead = (f.step_overhead_s + m.layers * f.layer_overhead_s
                    + f.seq_overhead_s * shape.num_seqs)
        allreduce = 0.0
        if tp > 1 and n > 0:
            msg = n * m.hidden * ACTIVATION_BYTES
            bw = g.interconnect_bytes_s(tp) * f.allreduce_efficiency
            allreduce = 2 * m.layers * (self.allreduce_latency_s + 2 * (tp - 1) / tp * msg / bw)
        elif tp > 1:
            allreduce = 2 * m.layers * self.allreduce_latency_s
        total = (max(compute, memory) if n else 0.0) + overhead + allreduce
        return {
            "flops": matmul_flops + head_flops + attn_flops,
            "attention_flops": attn_flops,
            "weight_bytes_read": weights_read,
            "kv_bytes": kv_bytes,
            "compute_s": compute,
            "memory_s": memory,
            "bound": "compute" if compute > memory else "memory",
            "overhead_s": overhead,
            "allreduce_s": allreduce,
            "total_s": total,
        }

    def describe(self) -> dict[str, Any]:
        """Derived quantities of this deployment, for the CLI (plain numbers and strings)."""
        m, g = self.model, self.gpu
        prefill_chunk = 8192
        floor = self.decode_step_s(1, 1)
        return {
            "model": m.name,
            "gpu": g.name,
            "tp": self.tp,
            "weight_dtype": self.weight_dtype,
            "kv_dtype": self.kv_dtype,
            "params_total": m.total_params,
            "params_active": m.active_params,
            "weight_gib": self.weight_bytes / GIB,
            "weight_gib_per_gpu": self.weight_bytes / GIB / self.tp,
            "kv_bytes_per_token": self.kv_bytes_per_token * self.kv_replication,
            "kv_capacity_tokens": self._capacity,
            "max_context": m.max_context,
            "decode_step_floor_s": floor,
            "decode_tokens_per_s_batch1": 1.0 / floor,
            "decode_step_batch64_ctx1k_s": self.decode_step_s(64, 1024),
            "prefill_tokens_per_s": prefill_chunk / self.prefill_step_s(prefill_chunk),
            "ttft_256_idle_s": self.ttft_estimate_s(256),
            "admission_delay_256_s": self.admission_delay_s(256),
            "allreduce_latency_s": self.allreduce_latency_s if self.tp > 1 else 0.0,
            "factors": self.factors.model_dump(),
        }

    # ------------------------------------------------------------------ memory fit

    def _kv_budget(self, tp: int, weight_bytes: float) -> float:
        f = self.factors
        per_gpu = self.gpu.memory_bytes * f.gpu_memory_utilization - f.reserve_gib * GIB
        return tp * per_gpu - weight_bytes

    def _tokens(self, tp: int, weight_bytes: float) -> int:
        rep = max(1, tp // self.model.kv_heads)
        budget = self._kv_budget(tp, weight_bytes)
        return max(0, math.floor(budget / (self.kv_bytes_per_token * rep)))

    def _fit_or_raise(self) -> int:
        tokens = self._tokens(self.tp, self.weight_bytes)
        if tokens >= MIN_KV_TOKENS:
            return tokens
        m, g, f, tp = self.model, self.gpu, self.factors, self.tp
        need = self.weight_bytes + MIN_KV_TOKENS * self.kv_bytes_per_token * self.kv_replication
        have = self._kv_budget(tp, 0.0)
        missing = (need - have) / GIB
        usable = g.memory_gib * f.gpu_memory_utilization - f.reserve_gib
        hints = []
        for t in (2, 4, 8, 16):
            if t > tp and m.heads % t == 0 and self._tokens(t, self.weight_bytes) >= MIN_KV_TOKENS:
                hints.append(f"tensor parallelism tp={t}")
                break
        for dt in ("fp8", "int4"):
            smaller = m.weight_bytes(dt)
            if smaller < self.weight_bytes and self._tokens(tp, smaller) >= MIN_KV_TOKENS:
                hints.append(f"weight dtype {dt} ({smaller / GIB:.1f} GiB)")
                break
        hint = " or ".join(hints) if hints else "a GPU with more memory"
        raise UserError(
            f"{m.name} with {self.weight_dtype} weights ({self.weight_bytes / GIB:.1f} GiB) does "
            f"not fit on {tp} x {g.name} ({usable:.1f} GiB usable per GPU at "
            f"gpu_memory_utilization {f.gpu_memory_utilization:g}, {f.reserve_gib:g} GiB reserved"
            f" for activations): {missing:.1f} GiB missing for the weights and a minimal "
            f"{MIN_KV_TOKENS}-token KV cache; use {hint}"
        )


def prefill_shape(tokens: int, context: int = 0) -> StepShape:
    """The shape of a step that prefills one chunk of ``tokens`` after ``context`` cached."""
    return StepShape(num_seqs=1, prefill_tokens=tokens, decode_tokens=0, kv_read_tokens=context,
                     prefill_attn_pairs=tokens * (context + (tokens + 1) / 2))


def _check_tp(m: ModelSpec, tp: int) -> int:
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise UserError(f"tensor parallelism must be a whole number >= 1, not {tp!r}")
    if m.heads % tp:
        raise UserError(f"tensor parallelism tp={tp} does not divide {m.name}'s "
                        f"{m.heads} attention heads; use a divisor of {m.heads} such as "
                        f"{', '.join(str(t) for t in (1, 2, 4, 8) if m.heads % t == 0)}")
    if tp > m.kv_heads and tp % m.kv_heads:
        raise UserError(f"tensor parallelism tp={tp} is not a multiple of {m.name}'s "
                        f"{m.kv_heads} KV heads; use a divisor or a multiple of {m.kv_heads}")
    if tp < m.kv_heads and m.kv_heads % tp:
        raise UserError(f"tensor parallelism tp={tp} does not divide {m.name}'s "
                        f"{m.kv_heads} KV heads; use a divisor of {m.kv_heads}")
    return tp
