"""Loading a model's tokenizer and finding its end-of-sequence tokens."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from transformers import AutoTokenizer

if TYPE_CHECKING:
    from transformers import GenerationConfig, PretrainedConfig, PreTrainedTokenizerBase

__all__ = ["load_tokenizer", "eos_token_ids"]

logger = logging.getLogger(__name__)


def load_tokenizer(source: str) -> PreTrainedTokenizerBase | None:
    """The tokenizer at `source`, or None when there is none (the engine then takes token ids)."""
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        logger.warning("no tokenizer at %s (%s): prompts must be token ids", source, error)
        return None


def eos_token_ids(
    generation_config: GenerationConfig | None,
    model_config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase | None,
) -> set[int]:
    """End-of-sequence ids from the generation config, the model config and the tokenizer."""
    ids: set[int] = set()
    for source in (generation_config, model_config):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(token) for token in eos)
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
