"""bitsandbytes int8 and nf4 on CPU: the engine loads and generates, and stores far fewer bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from deployments.tools.planner import ModelDims, load_model_config, weight_bytes
from engine import EngineConfig, LLMEngine, SamplingParams
from engine.model.model_runner import quantization_config

PROMPTS = [[5, 6, 7, 8], [40, 41, 42, 43, 44, 45, 46], [300, 301]]
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def hf_greedy(model_dir: Path, quantization: str, prompt: list[int]) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, quantization_config=quantization_config(quantization, torch.float32)
    ).eval()
    output = model.generate(
        torch.tensor([prompt]), max_new_tokens=GREEDY.max_tokens, do_sample=False, min_new_tokens=GREEDY.max_tokens
    )
    return output[0, len(prompt) :].tolist()


@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_quantized_engine_matches_generate_on_the_same_quantized_weights(llama_dir: Path, quantization: str) -> None:
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", quantization=quantization, num_kv_blocks=32))
    outputs = engine.generate(PROMPTS, GREEDY)  # the three prompts batched together
    for prompt, output in zip(PROMPTS, outputs):
        assert output.token_ids == hf_greedy(llama_dir, quantization, prompt)


@pytest.mark.parametrize(("quantization", "most"), [("int8", 0.6), ("nf4", 0.4)])
def test_quantized_weights_take_a_fraction_of_bfloat16(layered_dir: Path, quantization: str, most: float) -> None:
    bf16 = LLMEngine(EngineConfig(model=str(layered_dir), dtype="bfloat16", num_kv_blocks=4))
    quantized = LLMEngine(
        EngineConfig(model=str(layered_dir), dtype="bfloat16", quantization=quantization, num_kv_blocks=4)
    )
    ratio = quantized.executor.runner.weight_bytes / bf16.executor.runner.weight_bytes
    assert ratio <= most
    # The planner counts the same stored bytes, scales included.
    dims = ModelDims.from_config(load_model_config(str(layered_dir)))
    assert weight_bytes(dims, "bfloat16", quantization) == quantized.executor.runner.weight_bytes
    assert quantized.generate([[5, 6, 7]], GREEDY)[0].finish_reason == "length"
