"""What every section of the GPU check shares: its sizes, the device and dtype, the models, and
results one section leaves for another."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.gpu_device import Bandwidth, measure_bandwidth
from benchmarks.gpu_models import QWEN2_5_0_5B, QWEN2_5_1_5B, SMALL_QWEN2, ModelShape, write_random_model
from benchmarks.settings import RunResult
from engine import EngineConfig
from engine.config import DType, Quantization, Scheduling

__all__ = ["BLOCK_SIZE", "GPU_SIZES", "SMALL_SIZES", "CheckContext", "CheckSizes", "EngineRun"]

# Tokens per KV block (page), for the engine and transformers alike.
BLOCK_SIZE = 16


@dataclass(frozen=True)
class CheckSizes:
    """How much every section runs: `GPU_SIZES` on an accelerator, `SMALL_SIZES` for a CPU smoke run."""

    model: ModelShape
    # Sections 1 and 2 again on this larger model, when the budget allows; None: not run.
    large_model: ModelShape | None
    # The W2-shaped workload of sections 1 and 3: prompts of 16-max_prompt tokens, 8-max_new new.
    num_requests: int
    max_prompt: int
    max_new: int
    # Section 1's batch cap (engine max_num_seqs, transformers max_requests_per_batch).
    batch_size: int
    # Section 3's batch cap: below num_requests, so that static batches wait for their longest member.
    scheduling_batch_size: int
    # Requests that request-at-a-time scheduling runs: its tok/s does not depend on how many.
    num_request_mode: int
    # Token budget of one step, and the KV pool in blocks: engine and transformers alike.
    max_batched_tokens: int
    num_kv_blocks: int
    # Section 2: one request of this prompt length decoding this many tokens.
    decode_prompt_tokens: int
    decode_tokens: int
    # Section 5: a batch of this many prompts, each generating this many tokens.
    quant_prompts: int
    quant_tokens: int
    # Section 6: this many prompts, each compared over this many greedy tokens.
    agree_prompts: int
    agree_tokens: int
    # The bandwidth copy: buffer bytes and timed copies.
    copy_bytes: int
    num_copies: int
    # Section 8's workload size on the larger model.
    large_num_requests: int


GPU_SIZES = CheckSizes(
    model=QWEN2_5_0_5B,
    large_model=QWEN2_5_1_5B,
    num_requests=256,
    max_prompt=256,
    max_new=256,
    batch_size=256,
    scheduling_batch_size=64,
    num_request_mode=16,
    max_batched_tokens=4096,
    # 256 sequences of up to 512 tokens need 8192 blocks; the rest is prefix-cache room.
    num_kv_blocks=12288,
    decode_prompt_tokens=32,
    decode_tokens=256,
    quant_prompts=64,
    quant_tokens=64,
    agree_prompts=8,
    agree_tokens=32,
    copy_bytes=2 * 2**30,
    num_copies=20,
    large_num_requests=128,
)

SMALL_SIZES = CheckSizes(
    model=SMALL_QWEN2,
    large_model=None,
    num_requests=12,
    max_prompt=64,
    max_new=32,
    batch_size=8,
    scheduling_batch_size=4,
    num_request_mode=4,
    max_batched_tokens=256,
    num_kv_blocks=256,
    decode_prompt_tokens=16,
    decode_tokens=32,
    quant_prompts=4,
    quant_tokens=16,
    agree_prompts=4,
    agree_tokens=16,
    copy_bytes=64 * 2**20,
    num_copies=5,
    large_num_requests=0,
)


@dataclass(frozen=True)
class EngineRun:
    """One timed engine run of section 1 or 3, kept for section 4."""

    section: str
    scheduling: Scheduling
    batch_cap: int
    num_requests: int
    result: RunResult


_TORCH_DTYPES: dict[DType, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass
class CheckContext:
    sizes: CheckSizes
    # "cuda" or "cpu".
    device: str
    # Every section's dtype but section 5's (always bfloat16 against int8 and nf4): bfloat16 on a
    # GPU; float32 on a CPU, where the engine must match transformers exactly.
    dtype: DType
    # Where the random-weight models are written.
    model_root: Path
    threads: int
    # Measured once, by the first section that needs it.
    bandwidth: Bandwidth | None = None
    # Engine runs of sections 1 and 3, for section 4's KV waste.
    engine_runs: list[EngineRun] = field(default_factory=list)

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def torch_dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[self.dtype]

    def model_dir(self, shape: ModelShape) -> Path:
        """The shape's random-weight checkpoint in this dtype, written on first use."""
        return write_random_model(self.model_root / f"{shape.name}-{self.dtype}", shape, self.torch_dtype, self.device)

    def memory_bandwidth(self) -> Bandwidth:
        if self.bandwidth is None:
            self.bandwidth = measure_bandwidth(self.device, self.sizes.copy_bytes, self.sizes.num_copies)
        return self.bandwidth

    def engine_config(
        self,
        model_dir: Path,
        max_num_seqs: int,
        scheduling: Scheduling = "continuous",
        dtype: DType | None = None,
        quantization: Quantization | None = None,
    ) -> EngineConfig:
        return EngineConfig(
            model=str(model_dir),
            dtype=dtype or self.dtype,
            device=self.device,
            scheduling=scheduling,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=self.sizes.max_batched_tokens,
            num_kv_blocks=self.sizes.num_kv_blocks,
            block_size=BLOCK_SIZE,
            quantization=quantization,
        )
