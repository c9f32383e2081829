"""Builds one shard of a Hugging Face causal LM (a tensor-parallel slice of a pipeline stage),
reading only its part of the checkpoint.

The model's own transformers class is built on the meta device (no memory). With tensor
parallelism its projections, embedding and LM head are swapped for the shard-sized layers of
`engine.parallel.tp_layers`; with pipeline stages, the decoder layers outside the stage become
empty placeholders, and so do the embedding (but on the first stage), and the final norm and LM
head (but on the last). Each remaining parameter is then filled from the safetensors checkpoint
with a sliced read: a shard never holds (or reads into memory) another shard's weights. Attention
modules keep their code: they reshape projections with `-1` heads, so on a shard they run over
its heads only, and the paged KV cache holds only those heads of the stage's layers.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from engine.model.decoder_forward import supports_paged_decoder_forward
from engine.model.paged_attention import PAGED_ATTENTION, register_paged_attention
from engine.parallel.placement import check_shardable
from engine.parallel.stages import PipelineStage
from engine.parallel.tp_layers import RowParallelLinear, ShardGroup, VocabParallelEmbedding, VocabParallelLMHead

__all__ = ["load_shard", "shard_on_meta"]

# Modules split by output rows (whole heads, MLP columns), and by input columns.
_SPLIT_BY_ROWS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
_SPLIT_BY_COLUMNS = ("self_attn.o_proj", "mlp.down_proj")

_SAFETENSORS_INDEX = "model.safetensors.index.json"
_SAFETENSORS_FILE = "model.safetensors"


def load_shard(
    model: str, dtype: torch.dtype, device: torch.device, group: ShardGroup, stage: PipelineStage | None = None
) -> PreTrainedModel:
    """Shard `group.rank` of `model` (a directory or hub id) on `device`, of pipeline `stage`
    (None: the whole model).

    Raises ValueError when the model cannot be split `group.world_size` ways (heads, key/value
    heads or MLP width not divisible) or has no safetensors checkpoint.
    """
    if not Path(model).is_dir() and (Path(model).is_absolute() or model.startswith(".")):
        raise ValueError(
            f"model directory {model} does not exist on this shard's node: shards on other nodes need the "
            "model on shared storage, or a hub id"
        )
    register_paged_attention()
    config = AutoConfig.from_pretrained(model)
    sharded, split_dims = shard_on_meta(config, dtype, group, attn_implementation=PAGED_ATTENTION, stage=stage)
    tied = _embeddings_tied(sharded)
    sharded.to_empty(device=device)
    if tied:  # to_empty gives every module a new parameter, so a tie must be made again
        sharded.get_output_embeddings().weight = sharded.get_input_embeddings().weight
    _rebuild_computed_buffers(sharded, device)
    _load_slices(sharded, _checkpoint_files(model), split_dims, group)
    return sharded.eval()


def shard_on_meta(
    config: PretrainedConfig,
    dtype: torch.dtype,
    group: ShardGroup,
    attn_implementation: str | None = None,
    stage: PipelineStage | None = None,
) -> tuple[PreTrainedModel, dict[str, int]]:
    """Shard `group.rank` of pipeline `stage` (None: the whole model) of a model built from
    `config` on the meta device (no memory): its layers as this shard holds them, and each split
    parameter's name -> the dim it is sliced along.

    Raises ValueError when the model cannot be split `group.world_size` ways, or into stages. The
    planner counts a shard's bytes from this, so its figures are the engine's split.
    """
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    if stage is not None and not supports_paged_decoder_forward(model):
        raise ValueError(
            f"pipeline_parallel_size={stage.num_stages} needs a Llama-family decoder (Llama, Qwen2, Mistral: "
            f"model.layers, model.norm, lm_head); {type(model).__name__} cannot be split into stages"
        )
    check_shardable(config, group.world_size)
    split_dims = _shard_layers(model, group) if group.world_size > 1 else {}
    if stage is not None:
        _keep_stage(model, stage)
    return model, split_dims


def _keep_stage(model: PreTrainedModel, stage: PipelineStage) -> None:
    """Replace (on meta) what `stage` does not run with empty placeholders: the other stages'
    decoder layers (indices stay those of the whole model, as each attention's `layer_idx`),
    the embedding but on the first stage, the final norm and LM head but on the last. Tied
    embeddings stay where either end needs them: they are one tensor."""
    inner = model.model
    for index in range(len(inner.layers)):
        if index not in stage.layers:
            inner.layers[index] = nn.Identity()
    tied = _embeddings_tied(model)
    if not stage.is_first and not (tied and stage.is_last):
        inner.embed_tokens = nn.Identity()
    if not stage.is_last:
        inner.norm = nn.Identity()
        if not (tied and stage.is_first):
            model.lm_head = nn.Identity()


def _embeddings_tied(model: PreTrainedModel) -> bool:
    head_weight = getattr(model.get_output_embeddings(), "weight", None)
    return head_weight is not None and head_weight is getattr(model.get_input_embeddings(), "weight", None)


def _shard_layers(model: PreTrainedModel, group: ShardGroup) -> dict[str, int]:
    """Swap full layers for shard-sized ones (on meta); returns parameter name -> dim to slice."""
    split_dims: dict[str, int] = {}
    num_split = {"rows": 0, "columns": 0}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        has_bias = module.bias is not None
        options = {"device": "meta", "dtype": module.weight.dtype}
        if name.endswith(_SPLIT_BY_ROWS):
            start, end = group.split(module.out_features, f"{name} output features")
            model.set_submodule(name, nn.Linear(module.in_features, end - start, bias=has_bias, **options))
            num_split["rows"] += 1
            split_dims[f"{name}.weight"] = 0
            if has_bias:
                split_dims[f"{name}.bias"] = 0
        elif name.endswith(_SPLIT_BY_COLUMNS):
            start, end = group.split(module.in_features, f"{name} input features")
            sharded = RowParallelLinear(end - start, module.out_features, group, bias=has_bias, **options)
            model.set_submodule(name, sharded)
            num_split["columns"] += 1
            split_dims[f"{name}.weight"] = 1
    num_layers = model.config.get_text_config().num_hidden_layers
    expected = {"rows": len(_SPLIT_BY_ROWS) * num_layers, "columns": len(_SPLIT_BY_COLUMNS) * num_layers}
    if num_split != expected:
        # Fused projections (qkv_proj, gate_up_proj) or other layouts would split wrongly.
        raise ValueError(
            f"tensor-parallel shards support Llama-style decoder layers (separate q/k/v/o and gate/up/down "
            f"projections); {type(model).__name__} has {num_split}, expected {expected}"
        )
    split_dims.update(_shard_vocabulary(model, group))
    return split_dims


def _shard_vocabulary(model: PreTrainedModel, group: ShardGroup) -> dict[str, int]:
    """Split the embedding and LM head by vocabulary rows when the shards divide the vocabulary;
    otherwise every shard keeps them whole."""
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    vocab_size, hidden_size = embedding.weight.shape
    if vocab_size % group.world_size != 0 or head is None or head.bias is not None:
        return {}
    tied = head.weight is embedding.weight
    start, end = group.split(vocab_size, "vocabulary")
    options = {"device": "meta", "dtype": embedding.weight.dtype}
    embedding = VocabParallelEmbedding(end - start, hidden_size, vocab_start=start, group=group, **options)
    model.set_input_embeddings(embedding)
    model.set_output_embeddings(VocabParallelLMHead(hidden_size, end - start, group, **options))
    if tied:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    names = {id(module): name for name, module in model.named_modules()}
    return {
        f"{names[id(model.get_input_embeddings())]}.weight": 0,
        f"{names[id(model.get_output_embeddings())]}.weight": 0,
    }


def _rebuild_computed_buffers(model: PreTrainedModel, device: torch.device) -> None:
    """Recompute buffers that are not in the checkpoint (rotary frequencies): `to_empty` left them
    uninitialised."""
    for name, module in list(model.named_modules()):
        if not module._non_persistent_buffers_set:
            continue
        if not hasattr(module, "inv_freq") or not hasattr(module, "config"):
            raise ValueError(f"cannot shard {type(model).__name__}: {name} holds computed buffers of unknown kind")
        model.set_submodule(name, type(module)(config=module.config).to(device))


def _checkpoint_files(model: str) -> dict[str, Path]:
    """Tensor name -> safetensors file holding it."""
    directory = Path(model)
    if not directory.is_dir():
        directory = _download_checkpoint(model)
    index = directory / _SAFETENSORS_INDEX
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        return {name: directory / file for name, file in weight_map.items()}
    single = directory / _SAFETENSORS_FILE
    if not single.is_file():
        raise ValueError(f"loading a shard of a model needs safetensors weights; {model} has none")
    with safe_open(single, framework="pt") as checkpoint:
        return {name: single for name in checkpoint.keys()}


def _download_checkpoint(hub_id: str) -> Path:
    """The hub checkpoint's configs and the safetensors files its index names (a repository may
    hold other copies of the weights, such as a consolidated file, which are not fetched)."""
    from huggingface_hub import snapshot_download

    directory = Path(snapshot_download(hub_id, allow_patterns=["*.json"]))
    index = directory / _SAFETENSORS_INDEX
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [_SAFETENSORS_FILE]
    )
    return Path(snapshot_download(hub_id, allow_patterns=["*.json", *files]))


def _load_slices(model: PreTrainedModel, files: dict[str, Path], split_dims: dict[str, int], group: ShardGroup) -> None:
    """Fill every parameter and persistent buffer with its slice of the checkpoint."""
    # Tied tensors appear under several names; fill each once, from whichever name is stored.
    names_of: dict[int, list[str]] = defaultdict(list)
    tensors: dict[int, torch.Tensor] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        names_of[id(tensor)].append(name)
        tensors[id(tensor)] = tensor
    by_file: dict[Path, list[tuple[str, torch.Tensor, int | None]]] = defaultdict(list)
    for key, names in names_of.items():
        stored = next((name for name in names if name in files), None)
        if stored is None:
            raise ValueError(f"the checkpoint has no tensor for {' / '.join(names)}")
        dim = next((split_dims[name] for name in names if name in split_dims), None)
        by_file[files[stored]].append((stored, tensors[key], dim))
    with torch.no_grad():
        for file, entries in by_file.items():
            with safe_open(file, framework="pt") as checkpoint:
                for stored, target, dim in entries:
                    target.copy_(_read_slice(checkpoint, stored, dim, group))


def _read_slice(checkpoint: Any, name: str, dim: int | None, group: ShardGroup) -> torch.Tensor:
    """This shard's part of one stored tensor: rows (dim 0), columns (dim 1) or all (None)."""
    stored = checkpoint.get_slice(name)
    if dim is None:
        return stored[:]
    start, end = group.split(stored.get_shape()[dim], name)
    return stored[start:end] if dim == 0 else stored[:, start:end]
