"""Weights as the engine loads them: torch dtypes, bitsandbytes quantization, bytes as stored."""

from __future__ import annotations

import logging

import torch
from transformers import BitsAndBytesConfig, PreTrainedModel

from engine.config import DType

__all__ = ["TORCH_DTYPES", "quantization_config", "stored_weight_bytes"]

TORCH_DTYPES: dict[DType, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def quantization_config(quantization: str | None, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """The bitsandbytes config for EngineConfig.quantization (None: load as `dtype`)."""
    if quantization is None:
        return None
    # bitsandbytes logs a dtype cast on every int8 matmul.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if quantization == "int8":
        # Threshold 0 turns off outlier columns: they are chosen across the whole packed batch, so
        # a request's tokens would depend on what else runs beside it.
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=0.0)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def stored_weight_bytes(model: PreTrainedModel) -> int:
    """Bytes of the weights as stored, with bitsandbytes' scales (which are not parameters)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for parameter in model.parameters():
        scales = getattr(parameter, "SCB", None)  # int8: one float32 scale per output row
        if isinstance(scales, torch.Tensor):
            total += scales.numel() * scales.element_size()
        state = getattr(parameter, "quant_state", None)  # nf4: absmax per block, and a code table
        if state is not None:
            total += sum(t.numel() * t.element_size() for t in (state.absmax, state.code))
    return total
