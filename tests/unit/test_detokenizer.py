"""IncrementalDetokenizer on a real byte-level BPE tokenizer: streaming text, UTF-8, stop strings."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from engine.config import EngineConfig
from engine.core.detokenizer import IncrementalDetokenizer
from engine.core.output_processor import OutputProcessor
from engine.core.scheduler import Scheduler
from engine.core.sequence import Sequence
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.step_data import SampledTokens

PROMPT = "User: say something.\nAssistant:"


@pytest.fixture(scope="module")
def tokenizer(llama_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(llama_dir)


def make_detokenizer(tokenizer: PreTrainedTokenizerBase, stop: list[str]) -> IncrementalDetokenizer:
    return IncrementalDetokenizer(tokenizer, tokenizer.encode(PROMPT), stop)


def stream(detokenizer: IncrementalDetokenizer, token_ids: list[int]) -> tuple[list[str], str | None]:
    """Feeds one token per step as the engine does; returns the deltas and the stop string hit.

    The stream ends at a stop string or after the last token, and that step releases the rest.
    """
    deltas: list[str] = []
    for index, token_id in enumerate(token_ids):
        is_last = index == len(token_ids) - 1
        num_chars = len(detokenizer.text)
        detokenizer.add_tokens([token_id], finished=is_last)
        found = detokenizer.find_stop(len(detokenizer.text) - num_chars) if detokenizer.stop else None
        deltas.append(detokenizer.release(finished=found is not None or is_last))
        if found is not None:
            return deltas, found
    return deltas, None


def generate_through_engine_steps(
    tokenizer: PreTrainedTokenizerBase, output_token_ids: list[int], params: SamplingParams
) -> list[RequestOutput]:
    """Runs one request through the scheduler and the output processor; the "model" samples
    `output_token_ids` in order. Returns the request's output of every step."""
    scheduler = Scheduler(EngineConfig(model="unused"), num_kv_blocks=64, max_model_len=1024, eos_token_ids=set())
    processor = OutputProcessor(scheduler, tokenizer)
    seq = Sequence(request_id="r", prompt_token_ids=tokenizer.encode(PROMPT), params=params, seed=0)
    scheduler.add(seq)
    processor.add(seq)
    outputs: list[RequestOutput] = []
    for token_id in output_token_ids:
        batch = scheduler.schedule()
        updated = scheduler.update(batch, SampledTokens(token_ids=[token_id], logprobs=[0.0], top_logprobs=[[]]))
        outputs += processor.process(updated)
        if not scheduler.has_unfinished():
            break
    return outputs


TEXTS = [
    "Hello, world! This is a plain ASCII sentence.",
    " leading space and  double  spaces\nand a newline",
    "café crème brûlée, naïve façade",
    "€100 for 日本語のテキスト",
    "emoji 😀🎉 and 👩‍👩‍👧 family",
    "mixed: Ωmega ∑ → ✓ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]


@pytest.mark.parametrize("text", TEXTS)
def test_streaming_one_token_at_a_time_reproduces_decode(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    token_ids = tokenizer.encode(text)
    detokenizer = make_detokenizer(tokenizer, stop=[])

    deltas, found = stream(detokenizer, token_ids)

    assert found is None
    assert "".join(deltas) == tokenizer.decode(token_ids, skip_special_tokens=True) == text
    assert detokenizer.released_text == text


@pytest.mark.parametrize("text", TEXTS[2:])
def test_multi_byte_characters_split_across_tokens_are_never_streamed_as_halves(
    tokenizer: PreTrainedTokenizerBase, text: str
) -> None:
    token_ids = tokenizer.encode(text)
    # The text really has characters split over several tokens.
    assert any("\ufffd" in tokenizer.decode([token_id]) for token_id in token_ids)
    detokenizer = make_detokenizer(tokenizer, stop=[])

    deltas, _ = stream(detokenizer, token_ids)

    assert all("\ufffd" not in delta for delta in deltas)
    assert "".join(deltas) == text


def test_an_incomplete_utf8_tail_is_flushed_at_finish_like_decode(tokenizer: PreTrainedTokenizerBase) -> None:
    token_ids = tokenizer.encode("ok 日本")[:-1]  # the last character loses its final byte
    expected = tokenizer.decode(token_ids, skip_special_tokens=True)
    assert expected.endswith("\ufffd")

    deltas, _ = stream(make_detokenizer(tokenizer, stop=[]), token_ids)

    assert all("\ufffd" not in delta for delta in deltas[:-1])
    assert "".join(deltas) == expected


def test_special_tokens_are_skipped(tokenizer: PreTrainedTokenizerBase) -> None:
    token_ids = tokenizer.encode("Hi") + [tokenizer.eos_token_id]
    deltas, _ = stream(make_detokenizer(tokenizer, stop=[]), token_ids)
    assert "".join(deltas) == "Hi"


@pytest.mark.parametrize(
    ("text", "stop", "expected_text", "expected_stop"),
    [
        ("The answer is 42. END of story", ["END"], "The answer is 42. ", "END"),
        ("Hello world, and more", ["world"], "Hello ", "world"),  # "world" spans several deltas
        ("one\n\ntwo", ["\n\n"], "one", "\n\n"),
        ("alpha beta gamma delta", ["gamma", "beta"], "alpha ", "beta"),
        ("alpha beta gamma delta", ["beta", "gamma"], "alpha ", "beta"),
        ("naïve façade", ["ç"], "naïve fa", "ç"),
        ("no stop here", ["STOP"], "no stop here", None),
    ],
)
def test_stop_strings_cut_the_text_before_them(
    tokenizer: PreTrainedTokenizerBase, text: str, stop: list[str], expected_text: str, expected_stop: str | None
) -> None:
    detokenizer = make_detokenizer(tokenizer, stop=stop)

    deltas, found = stream(detokenizer, tokenizer.encode(text))

    assert found == expected_stop
    assert "".join(deltas) == expected_text
    assert detokenizer.released_text == expected_text


@pytest.mark.parametrize("stop", [["STOP", "END"], ["END", "STOP"]])
def test_earliest_stop_string_in_the_text_wins(tokenizer: PreTrainedTokenizerBase, stop: list[str]) -> None:
    detokenizer = make_detokenizer(tokenizer, stop=stop)
    detokenizer.add_tokens(tokenizer.encode("xx END yy STOP zz"))  # both arrive in one delta

    assert detokenizer.find_stop(len(detokenizer.text)) == "END"
    assert detokenizer.text == "xx "


def test_a_stop_string_spanning_two_deltas_is_found(tokenizer: PreTrainedTokenizerBase) -> None:
    detokenizer = make_detokenizer(tokenizer, stop=["<end>"])
    for part, expected in (("some text <e", None), ("nd> more", "<end>")):
        num_chars = len(detokenizer.text)
        detokenizer.add_tokens(tokenizer.encode(part))
        assert detokenizer.find_stop(len(detokenizer.text) - num_chars) == expected
    assert detokenizer.text == "some text "


def test_a_possible_stop_string_start_is_held_back_until_finish(tokenizer: PreTrainedTokenizerBase) -> None:
    detokenizer = make_detokenizer(tokenizer, stop=["STOP"])
    token_ids = tokenizer.encode("abc ST")

    deltas, found = stream(detokenizer, token_ids)

    assert found is None
    streamed_before_finish = "".join(deltas[:-1])
    assert "S" not in streamed_before_finish
    assert "ST" in deltas[-1]
    assert "".join(deltas) == "abc ST"


def test_held_back_text_is_released_once_it_cannot_start_a_stop_string(tokenizer: PreTrainedTokenizerBase) -> None:
    detokenizer = make_detokenizer(tokenizer, stop=["STOP"])
    text = "abc STAR and then a long tail of text"

    deltas, found = stream(detokenizer, tokenizer.encode(text))

    assert found is None
    assert "STAR" in "".join(deltas[:-1])
    assert "".join(deltas) == text


@pytest.mark.parametrize("last_token_finishes_by", ["max_tokens", "stop_token_ids"])
def test_stop_string_completed_by_the_last_token_is_not_returned(
    tokenizer: PreTrainedTokenizerBase, last_token_finishes_by: str
) -> None:
    output_token_ids = tokenizer.encode("ab END")
    if last_token_finishes_by == "max_tokens":
        params = SamplingParams(max_tokens=len(output_token_ids), stop=["END"])
    else:
        params = SamplingParams(max_tokens=16, stop=["END"], stop_token_ids=[output_token_ids[-1]])

    outputs = generate_through_engine_steps(tokenizer, output_token_ids, params)

    assert outputs[-1].finished
    assert outputs[-1].text == "ab "
    assert "".join(output.delta_text for output in outputs) == "ab "


def test_stop_string_before_the_last_token_finishes_with_stop(tokenizer: PreTrainedTokenizerBase) -> None:
    output_token_ids = tokenizer.encode("ab END and more")

    outputs = generate_through_engine_steps(tokenizer, output_token_ids, SamplingParams(max_tokens=16, stop=["END"]))

    assert outputs[-1].finish_reason == "stop"
    assert outputs[-1].text == "".join(output.delta_text for output in outputs) == "ab "
    assert outputs[-1].token_ids == tokenizer.encode("ab END")  # nothing sampled after the stop
