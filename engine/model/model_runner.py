"""Loads a Hugging Face causal LM, owns its paged KV cache and runs one packed forward per step."""

from __future__ import annotations

import logging
import time

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from engine.config import EngineConfig
from engine.hardware import resolve_dtype
from engine.model.decoder_forward import paged_decoder_forward, paged_stage_forward, supports_paged_decoder_forward
from engine.model.fusion import fuse_projections
from engine.model.kv_cache import kv_cache_shape
from engine.model.memory import available_memory_bytes
from engine.model.paged_attention import PAGED_ATTENTION, build_metadata, register_paged_attention
from engine.model.weights import TORCH_DTYPES, quantization_config, stored_weight_bytes
from engine.parallel.shard_loader import load_shard
from engine.parallel.stages import PipelineStage
from engine.parallel.tp_layers import ShardGroup
from engine.step_data import SchedulerOutput

__all__ = ["ModelRunner", "plan_num_kv_blocks"]

logger = logging.getLogger(__name__)


def plan_num_kv_blocks(config: EngineConfig, bytes_per_block: int, max_model_len: int, free_bytes: int) -> int:
    """KV blocks for a runner that may use `free_bytes` of memory: `num_kv_blocks` when set, else
    `kv_cache_memory_fraction` of it, capped at what `max_num_seqs` full-length sequences use."""
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    fits = int(free_bytes * config.kv_cache_memory_fraction // bytes_per_block)
    # More blocks than every sequence at full length can use only buys prefix-cache room.
    useful = config.max_num_seqs * -(-max_model_len // config.block_size)
    num_blocks = min(fits, useful)
    if num_blocks < 1:
        raise ValueError(
            f"kv_cache_memory_fraction={config.kv_cache_memory_fraction} leaves no room for one KV block of "
            f"{bytes_per_block} bytes in {free_bytes} free bytes"
        )
    return num_blocks


class ModelRunner:
    """The model (or one shard of it: a tensor-parallel slice, a pipeline stage's layers) and its
    KV cache on one device.

    Construction loads the weights and plans how many KV blocks fit; `allocate_kv_cache` then
    allocates the pool, whose size the shards of one model must agree on.
    """

    def __init__(
        self,
        config: EngineConfig,
        shard: ShardGroup | None = None,
        memory_share: float = 1.0,
        stage: PipelineStage | None = None,
    ) -> None:
        """`memory_share`: the part of the device's free memory this runner may plan for (shards
        sharing one node's memory each take theirs). `stage`: the pipeline stage this runner
        holds (None: the whole model)."""
        config = resolve_dtype(config)
        self.config = config
        self.memory_share = memory_share
        self.shard = shard or ShardGroup(rank=0, world_size=1)
        self.stage = stage
        self.device = torch.device(config.device)
        self.dtype = TORCH_DTYPES[config.dtype]
        self.block_size = config.block_size
        start = time.perf_counter()
        self.model = self._load_model()
        # Llama-family models skip Hugging Face's forward loop (engine/model/decoder_forward.py);
        # only they load as pipeline stages (shard_loader refuses the others).
        self.own_forward = supports_paged_decoder_forward(self.model)
        self.weight_bytes = stored_weight_bytes(self.model)
        self.layers = range(self.model.config.num_hidden_layers) if stage is None else stage.layers
        self.kv_shape = kv_cache_shape(self.model.config, config.dtype, self.shard.world_size, len(self.layers))
        self.max_model_len = self._resolve_max_model_len()
        self.planned_kv_blocks = plan_num_kv_blocks(
            config,
            self.kv_shape.bytes_per_block(self.block_size),
            self.max_model_len,
            int(available_memory_bytes(self.device) * memory_share),
        )
        self.num_kv_blocks = 0
        self.kv_caches: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        logger.info(
            "loaded %s%s in %.1fs: weights %.1f MiB in %s on %s",
            config.model,
            f" shard {self.shard.rank}/{self.shard.world_size}" if self.shard.world_size > 1 else "",
            time.perf_counter() - start,
            self.weight_bytes / 2**20,
            config.dtype,
            self.device,
        )

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self.num_kv_blocks = num_blocks
        self.kv_caches = self._allocate_kv_caches()
        logger.info(
            "KV cache %d blocks x %d tokens (%.1f MiB) on %s",
            num_blocks,
            self.block_size,
            num_blocks * self.kv_shape.bytes_per_block(self.block_size) / 2**20,
            self.device,
        )

    def _load_model(self) -> PreTrainedModel:
        model = self._load_weights()
        fuse_projections(model)
        return model

    def _load_weights(self) -> PreTrainedModel:
        if self.shard.world_size > 1 or self.stage is not None:
            return load_shard(self.config.model, self.dtype, self.device, self.shard, self.stage)
        register_paged_attention()
        model = AutoModelForCausalLM.from_pretrained(
            self.config.model,
            dtype=self.dtype,
            attn_implementation=PAGED_ATTENTION,
            device_map={"": self.device},
            quantization_config=quantization_config(self.config.quantization, self.dtype),
        )
        return model.eval()

    def _resolve_max_model_len(self) -> int:
        model_limit = int(self.model.config.get_text_config().max_position_embeddings)
        if self.config.max_model_len is None:
            return model_limit
        if self.config.max_model_len > model_limit:
            raise ValueError(
                f"max_model_len must be <= the model's max_position_embeddings ({model_limit}), "
                f"got {self.config.max_model_len}"
            )
        return self.config.max_model_len

    def _allocate_kv_caches(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """By layer index, this runner's layers only."""
        # Zeroed, not empty: padded context slots are masked, but 0 * NaN would still poison sums.
        shape = (self.num_kv_blocks * self.block_size, self.kv_shape.num_kv_heads, self.kv_shape.head_dim)
        return {
            layer: (
                torch.zeros(shape, dtype=self.dtype, device=self.device),
                torch.zeros(shape, dtype=self.dtype, device=self.device),
            )
            for layer in self.layers
        }

    @torch.inference_mode()
    def forward(self, batch: SchedulerOutput, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Run every scheduled chunk; return logits (N + M, V): first the N chunks that sample (at
        their last token), then the M positions whose logits score prompt tokens (chunk order).

        A pipeline stage but the first starts from `hidden` (1, T, H), the previous stage's
        output, and a stage but the last returns its hidden state (1, T, H) instead of logits."""
        chunks = batch.chunks
        metadata, positions = build_metadata(
            chunk_lengths=[len(chunk.token_ids) for chunk in chunks],
            start_positions=[chunk.start_position for chunk in chunks],
            block_tables=[chunk.block_ids for chunk in chunks],
            block_size=self.block_size,
            kv_caches=self.kv_caches,
            device=self.device,
        )
        input_ids: list[int] = []
        sample_index: list[int] = []  # packed index of the last token of each sampling chunk
        prompt_index: list[int] = []  # packed indices of the positions scoring prompt tokens
        for chunk in chunks:
            chunk_start = len(input_ids)
            input_ids.extend(chunk.token_ids)
            if chunk.sampling is not None:
                sample_index.append(len(input_ids) - 1)
            first = chunk_start + chunk.prompt_logprob_offset
            prompt_index.extend(range(first, first + len(chunk.prompt_logprob_targets)))
        sample_index += prompt_index
        token_tensor = torch.tensor(input_ids, device=self.device)  # (T,)
        positions = positions.to(self.device)  # (T,)
        # long even when empty: a step of prompt chunks that do not sample keeps no logits
        keep = torch.tensor(sample_index, dtype=torch.long, device=self.device)  # (N,)
        if self.stage is not None:
            return paged_stage_forward(self.model, self.stage, token_tensor, hidden, positions, keep, metadata)
        if self.own_forward:
            return paged_decoder_forward(self.model, token_tensor, positions, keep, metadata)
        outputs = self.model(
            input_ids=token_tensor[None, :],  # (1, T)
            position_ids=positions[None, :],  # (1, T)
            use_cache=False,
            logits_to_keep=keep,
            paged_metadata=metadata,
        )
        return outputs.logits[0]  # (N, V)
