"""Packed projections compute what the separate ones did, in any call order."""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP

from engine.model.fusion import GateUpMLP, PackedProjection, fuse_projections


def _config() -> LlamaConfig:
    return LlamaConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2)


def test_gate_up_mlp_matches_the_gated_mlp() -> None:
    torch.manual_seed(0)
    mlp = LlamaMLP(_config())
    x = torch.randn(5, 32)
    expected = mlp(x)
    fused = GateUpMLP(mlp)
    torch.testing.assert_close(fused(x), expected)


def test_packed_qkv_matches_separate_projections_in_order_and_out_of_order() -> None:
    torch.manual_seed(0)
    holder = nn.Module()
    holder.attn = LlamaAttention(_config(), layer_idx=0)
    separate = [holder.attn.q_proj, holder.attn.k_proj, holder.attn.v_proj]
    x, other = torch.randn(3, 32), torch.randn(3, 32)
    expected = [layer(x) for layer in separate]
    expected_other = [layer(other) for layer in separate]

    assert fuse_projections(holder) == 1
    packed = [holder.attn.q_proj, holder.attn.k_proj, holder.attn.v_proj]
    assert all(isinstance(layer, PackedProjection) for layer in packed)
    for got, want in zip([layer(x) for layer in packed], expected):  # q, k, v on one input
        torch.testing.assert_close(got, want)
    # k and v on another input than q's, then v before k: each still gets its own rows.
    torch.testing.assert_close(packed[0](x), expected[0])
    torch.testing.assert_close(packed[1](other), expected_other[1])
    torch.testing.assert_close(packed[2](x), expected[2])
    torch.testing.assert_close(packed[2](other), expected_other[2])


def test_quantized_or_unknown_layers_are_left_alone() -> None:
    class CustomLinear(nn.Linear):
        pass

    holder = nn.Module()
    holder.mlp = LlamaMLP(_config())
    holder.mlp.gate_proj = CustomLinear(32, 48, bias=False)
    holder.other = nn.Sequential(nn.Linear(4, 4))
    assert fuse_projections(holder) == 0
    assert isinstance(holder.mlp, LlamaMLP)
