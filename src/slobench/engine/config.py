"""One serving setup for the engine model: which model on which GPUs, scheduled how.

The same EngineConfig builds the HTTP emulator and the virtual-time simulator, so both run the
identical scheduler over the identical step-time model.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from slobench.engine.costmodel import RooflineCostModel, load_factors
from slobench.engine.scheduler import Scheduler, SchedulerConfig

DEFAULT_MODEL = "llama-3.1-8b"
DEFAULT_GPU = "h100-sxm"


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = DEFAULT_MODEL  # catalog name or a Hugging Face config.json path
    gpu: str = DEFAULT_GPU  # catalog name or a GPU file
    tp: int = Field(1, ge=1)
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    factors: str | None = None  # file overriding CostFactors
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    block_size: int = 16
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    policy: str = "fcfs"
    served_model_name: str | None = None  # the name /v1/models reports

    @cached_property
    def cost_model(self) -> RooflineCostModel:
        factors = load_factors(Path(self.factors)) if self.factors else None
        return RooflineCostModel(self.model, self.gpu, tp=self.tp,
                                 weight_dtype=self.weight_dtype, kv_dtype=self.kv_dtype,
                                 factors=factors)

    def scheduler_config(self, prefix_block_tokens: int | None = None) -> SchedulerConfig:
        return SchedulerConfig(max_num_batched_tokens=self.max_num_batched_tokens,
                               max_num_seqs=self.max_num_seqs, block_size=self.block_size,
                               enable_chunked_prefill=self.enable_chunked_prefill,
                               enable_prefix_caching=self.enable_prefix_caching,
                               policy=self.policy, prefix_block_tokens=prefix_block_tokens)

    def scheduler_maker(self, prefix_block_tokens: int | None) -> Callable[[], Scheduler]:
        """For the simulator: schedulers that read each Workload ``prefix_blocks`` hash as
        ``prefix_block_tokens`` tokens (the emulator hashes real token blocks instead)."""
        config = self.scheduler_config(prefix_block_tokens)
        return lambda: Scheduler(self.cost_model, config)

    def make_scheduler(self) -> Scheduler:
        """A fresh scheduler (one per replica) over the shared cost model."""
        return Scheduler(self.cost_model, self.scheduler_config())

    def validate_all(self) -> EngineConfig:
        """Build everything once so a bad setup fails before any server starts."""
        self.make_scheduler()
        return self

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.cost_model.model.name

    @property
    def max_model_len(self) -> int:
        return self.cost_model.model.max_context or 131072

    def admission_delay_s(self, prompt_tokens: int) -> float:
        """Frontend time (HTTP, tokenization, templating) before the scheduler sees a request."""
        return self.cost_model.admission_delay_s(prompt_tokens)

    def describe(self) -> dict[str, Any]:
        return {"config": self.model_dump(), **self.cost_model.describe()}
