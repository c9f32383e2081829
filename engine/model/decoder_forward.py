"""The forward pass of a Llama-family decoder over packed, paged input, without Hugging Face's loop.

`LlamaForCausalLM.forward` (and Qwen2's, Mistral's) wraps its layers in machinery the engine does
not use: output capturing, kwarg deprecation, a causal mask built for every step (which paged
attention ignores), per-layer keyword plumbing. At decode batch sizes on a CPU that Python costs
a visible share of a step. This module runs the same modules of the same model in the same order,
calling their own submodules (norms, projections, rotary embedding, MLP), so weights, quantized
layers and tensor-parallel layers are untouched:

    h = embed(ids)                                    (1, T, H)
    per layer:  h = h + o_proj(paged_attention(rope(q(n1(h))), rope(k(n1(h))), v(n1(h))))
                h = h + mlp(n2(h))
    logits = lm_head(norm(h)[rows that sample])       (N, V)

A pipeline stage runs a part of it: the first embeds, each runs its layers, the last computes the
logits; the hidden state h is what passes from one stage to the next. Architectures not in
`ATTENTION_SLIDING_WINDOW` run through the model's own forward instead (and cannot be staged).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn

from engine.model.paged_attention import PagedAttentionMetadata, paged_attention_forward
from engine.parallel.stages import PipelineStage

__all__ = [
    "ATTENTION_SLIDING_WINDOW",
    "paged_decoder_forward",
    "paged_stage_forward",
    "supports_paged_decoder_forward",
]


def _no_window(attention: nn.Module) -> int | None:
    return None


def _own_window(attention: nn.Module) -> int | None:
    return attention.sliding_window


def _config_window(attention: nn.Module) -> int | None:
    return getattr(attention.config, "sliding_window", None)


# Attention classes whose layer is `h + attn(norm1(h))`, then `h + mlp(norm2(h))`, and where each
# takes its sliding window from (as its own forward does).
ATTENTION_SLIDING_WINDOW: dict[str, Callable[[nn.Module], int | None]] = {
    "LlamaAttention": _no_window,
    "Qwen2Attention": _own_window,
    "MistralAttention": _config_window,
}


def supports_paged_decoder_forward(model: nn.Module) -> bool:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(inner, "rotary_emb") or not hasattr(model, "lm_head"):
        return False
    # A pipeline stage holds empty placeholders for the other stages' layers.
    held = [layer for layer in layers if not isinstance(layer, nn.Identity)]
    return all(type(layer.self_attn).__name__ in ATTENTION_SLIDING_WINDOW for layer in held)


def paged_decoder_forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    sample_index: torch.Tensor,
    metadata: PagedAttentionMetadata,
) -> torch.Tensor:
    """input_ids and positions (T,), sample_index (N,) packed rows to keep -> logits (N, V)."""
    hidden = model.model.embed_tokens(input_ids)[None]  # (1, T, H)
    hidden = _run_layers(model, range(model.config.num_hidden_layers), hidden, positions, metadata)
    return _logits(model, hidden, sample_index)


def paged_stage_forward(
    model: nn.Module,
    stage: PipelineStage,
    input_ids: torch.Tensor,
    hidden: torch.Tensor | None,
    positions: torch.Tensor,
    sample_index: torch.Tensor,
    metadata: PagedAttentionMetadata,
) -> torch.Tensor:
    """One pipeline stage: from input_ids (T,) on the first, else from the previous stage's hidden
    state (1, T, H), through the stage's layers -> logits (N, V) on the last stage, else the
    hidden state (1, T, H) for the next."""
    if stage.is_first:
        hidden = model.model.embed_tokens(input_ids)[None]
    if hidden is None:
        raise ValueError(f"pipeline stage {stage.index} needs the hidden state of stage {stage.index - 1}")
    hidden = _run_layers(model, stage.layers, hidden, positions, metadata)
    return _logits(model, hidden, sample_index) if stage.is_last else hidden


def _run_layers(
    model: nn.Module, layers: range, hidden: torch.Tensor, positions: torch.Tensor, metadata: PagedAttentionMetadata
) -> torch.Tensor:
    """hidden (1, T, H) through decoder layers `layers` -> (1, T, H)."""
    inner = model.model
    position_embeddings = inner.rotary_emb(hidden, position_ids=positions[None])  # cos, sin (1, T, D)
    for index in layers:
        layer = inner.layers[index]
        attended = _attention(layer.self_attn, layer.input_layernorm(hidden), position_embeddings, metadata)
        hidden = hidden + attended
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return hidden


def _logits(model: nn.Module, hidden: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
    """hidden (1, T, H) -> logits (N, V) of the rows that sample."""
    return model.lm_head(model.model.norm(hidden[0, sample_index]))


def _attention(
    attention: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    metadata: PagedAttentionMetadata,
) -> torch.Tensor:
    """hidden (1, T, H) -> (1, T, H), as the attention module's own forward computes it."""
    num_tokens = hidden.shape[1]
    shape = (1, num_tokens, -1, attention.head_dim)
    query = attention.q_proj(hidden).view(shape).transpose(1, 2)  # (1, heads, T, D)
    key = attention.k_proj(hidden).view(shape).transpose(1, 2)  # (1, kv heads, T, D)
    value = attention.v_proj(hidden).view(shape).transpose(1, 2)
    # The rotary function of the attention's own modeling module (each architecture defines it).
    apply_rotary = sys.modules[type(attention).__module__].apply_rotary_pos_emb
    query, key = apply_rotary(query, key, *position_embeddings)
    output, _ = paged_attention_forward(
        attention,
        query,
        key,
        value,
        None,
        scaling=attention.scaling,
        sliding_window=ATTENTION_SLIDING_WINDOW[type(attention).__name__](attention),
        paged_metadata=metadata,
    )  # (1, T, heads, D)
    return attention.o_proj(output.reshape(1, num_tokens, -1))
