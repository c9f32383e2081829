"""One matmul where a decoder layer runs several on the same input: q, k and v, and gate and up.

A decode step multiplies a few dozen tokens by each projection, so the cost of a matmul is
mostly per call, not per FLOP; packing q/k/v (3 -> 1) and gate/up (2 -> 1) cuts a Llama layer's
seven matmuls to four. The model's own forward code is kept:

- `GateUpMLP` replaces a gated MLP (`down(act(gate(x)) * up(x))`, the same in every architecture
  listed in `GATED_MLPS`) with one `gate_up_proj`.
- q, k and v stay three modules, because each architecture's attention forward calls them and
  then applies its own rotary embedding, sliding window and attention interface. They share one
  packed weight (`PackedProjections`): the q module runs the packed matmul and holds the k and v
  columns until the k and v modules are called on that same input, which is the order every
  listed attention calls them in. Called on any other input, a module multiplies by its own
  rows of the packed weight, so the result is right whatever the order.

Only plain dense `nn.Linear` layers are fused: bitsandbytes layers keep their own kernels, and a
tensor-parallel shard's column slices are plain layers whose packing is as correct as the whole
model's. The packed weight replaces the original layers' weights: no extra memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ATTENTIONS", "GATED_MLPS", "GateUpMLP", "PackedProjection", "PackedProjections", "fuse_projections"]

# Module classes whose forward is known to match what each fusion assumes.
GATED_MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP"})
ATTENTIONS = frozenset({"LlamaAttention", "MistralAttention", "Qwen2Attention"})


def _is_dense(*layers: nn.Module) -> bool:
    return all(type(layer) is nn.Linear for layer in layers)


def _pack(layers: list[nn.Linear]) -> tuple[nn.Parameter, nn.Parameter | None]:
    """The layers' weights (and biases) stacked by output row."""
    weight = nn.Parameter(torch.cat([layer.weight.data for layer in layers]), requires_grad=False)
    if layers[0].bias is None:
        return weight, None
    bias = nn.Parameter(torch.cat([layer.bias.data for layer in layers]), requires_grad=False)
    return weight, bias


class GateUpMLP(nn.Module):
    """A gated MLP with its gate and up projections as one (2I, H) matmul."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.intermediate_size = mlp.gate_proj.out_features
        # On the meta device: its weight is replaced at once by the packed one.
        self.gate_up_proj = nn.Linear(mlp.gate_proj.in_features, 2 * self.intermediate_size, bias=False, device="meta")
        weight, bias = _pack([mlp.gate_proj, mlp.up_proj])
        self.gate_up_proj.weight = weight
        self.gate_up_proj.bias = bias
        self.down_proj = mlp.down_proj
        self.act_fn = mlp.act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)  # (..., I) each
        return self.down_proj(self.act_fn(gate) * up)


class PackedProjections(nn.Module):
    """The packed weight of several projections of one input, and the output of the last packed
    matmul until each projection has taken its columns."""

    def __init__(self, layers: list[nn.Linear]) -> None:
        super().__init__()
        self.weight, self.bias = _pack(layers)
        self.sizes = [layer.out_features for layer in layers]
        self._input: torch.Tensor | None = None
        self._parts: list[torch.Tensor | None] = []

    def compute(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Projection `index` of x: the first one runs the packed matmul for all of them."""
        if index == 0:
            self._parts = list(F.linear(x, self.weight, self.bias).split(self.sizes, dim=-1))
            self._input = x
        part = self._parts[index] if self._input is x and index < len(self._parts) else None
        if part is None:
            start = sum(self.sizes[:index])
            rows = slice(start, start + self.sizes[index])
            return F.linear(x, self.weight[rows], None if self.bias is None else self.bias[rows])
        self._parts[index] = None  # taken: the step's activations are not kept past their use
        if all(remaining is None for remaining in self._parts):
            self._input = None
        return part


class PackedProjection(nn.Module):
    """One projection whose weight lives in a `PackedProjections`."""

    def __init__(self, packed: PackedProjections, index: int, layer: nn.Linear) -> None:
        super().__init__()
        # Not a submodule: the packed weight is registered once, on the attention module.
        object.__setattr__(self, "packed", packed)
        self.index = index
        self.in_features = layer.in_features
        self.out_features = layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.packed.compute(self.index, x)


def fuse_projections(model: nn.Module) -> int:
    """Fuse every eligible gated MLP and q/k/v trio of `model` in place; returns how many modules
    were fused (0 for an architecture or layer type this does not know).

    One module at a time, holding no reference to the ones replaced, so the peak memory is the
    model plus one module's packed weights (and a GPU's allocator cache is emptied after).
    """
    targets = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child).__name__ in GATED_MLPS | ATTENTIONS
    ]
    fused = 0
    for parent, name in targets:
        fused += _fuse(parent, name)
    if fused and torch.cuda.is_available():
        torch.cuda.empty_cache()  # the replaced weights' blocks, before the KV pool is planned
    return fused


def _fuse(parent: nn.Module, name: str) -> int:
    child = getattr(parent, name)
    if type(child).__name__ in GATED_MLPS and _is_dense(child.gate_proj, child.up_proj):
        setattr(parent, name, GateUpMLP(child))
        return 1
    if type(child).__name__ in ATTENTIONS and _is_dense(child.q_proj, child.k_proj, child.v_proj):
        layers = [child.q_proj, child.k_proj, child.v_proj]
        child.qkv_packed = PackedProjections(layers)
        for index, attr in enumerate(("q_proj", "k_proj", "v_proj")):
            setattr(child, attr, PackedProjection(child.qkv_packed, index, layers[index]))
        return 1
    return 0
