"""Turns sequences that gained tokens into `RequestOutput` deltas: text, stop strings, timing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.core.detokenizer import IncrementalDetokenizer
from engine.core.scheduler import Scheduler
from engine.core.sequence import Sequence
from engine.outputs import OutputHistory, RequestOutput, RequestTiming

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["OutputProcessor"]


class OutputProcessor:
    def __init__(self, scheduler: Scheduler, tokenizer: PreTrainedTokenizerBase | None) -> None:
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self._detokenizers: dict[str, IncrementalDetokenizer] = {}
        # How many output tokens each request has already reported.
        self._num_reported: dict[str, int] = {}
        # Each request's output history, shared (append-only) with every output it hands out.
        self._histories: dict[str, OutputHistory] = {}
        # Requests whose prompt logprobs were handed out (in their first output).
        self._prompt_logprobs_sent: set[str] = set()

    def add(self, seq: Sequence) -> None:
        self._num_reported[seq.request_id] = 0
        self._histories[seq.request_id] = OutputHistory(
            seq.output_token_ids, seq.output_logprobs, seq.output_top_logprobs, []
        )
        if self.tokenizer is not None:
            params = seq.params
            self._detokenizers[seq.request_id] = IncrementalDetokenizer(
                self.tokenizer,
                seq.prompt_token_ids,
                params.stop,
                include_stop=params.include_stop_str_in_output,
                skip_special_tokens=params.skip_special_tokens,
            )

    def discard(self, request_id: str) -> None:
        self._prompt_logprobs_sent.discard(request_id)
        self._num_reported.pop(request_id, None)
        self._detokenizers.pop(request_id, None)
        self._histories.pop(request_id, None)

    def process(self, sequences: list[Sequence]) -> list[RequestOutput]:
        return [self._output(seq) for seq in sequences]

    def _finish_on_stop_string(self, seq: Sequence) -> None:
        if seq.is_finished:
            # The same token also hit max_tokens or a stop token: the stop string names the cause.
            seq.finish_reason = "stop"
        else:
            self.scheduler.finish(seq.request_id, "stop")

    def _output(self, seq: Sequence) -> RequestOutput:
        request_id = seq.request_id
        num_reported = self._num_reported[request_id]
        history = self._histories[request_id]
        new_token_ids = seq.output_token_ids[num_reported:]
        delta_text = ""
        detokenizer = self._detokenizers.get(request_id)
        if detokenizer is not None:
            num_chars = len(detokenizer.text)
            detokenizer.add_tokens(new_token_ids, finished=seq.is_finished)
            looks_for_stop = detokenizer.stop and seq.num_output_tokens >= seq.params.min_tokens
            if looks_for_stop and detokenizer.find_stop(len(detokenizer.text) - num_chars):
                self._finish_on_stop_string(seq)
            delta_text = detokenizer.release(finished=seq.is_finished)
            if delta_text:
                history.text_pieces.append(delta_text)
        self._num_reported[request_id] = seq.num_output_tokens
        new_prompt_logprobs = None
        if seq.params.prompt_logprobs is not None and request_id not in self._prompt_logprobs_sent:
            self._prompt_logprobs_sent.add(request_id)
            new_prompt_logprobs = [None, *seq.prompt_logprobs]
            history.prompt_logprobs.extend(new_prompt_logprobs)
        if seq.is_finished:
            self.discard(request_id)
        return RequestOutput(
            request_id=request_id,
            prompt_token_ids=seq.prompt_token_ids,
            new_token_ids=new_token_ids,
            new_logprobs=seq.output_logprobs[num_reported:],
            new_top_logprobs=seq.output_top_logprobs[num_reported:],
            delta_text=delta_text,
            finish_reason=seq.finish_reason,
            timing=RequestTiming(seq.arrival_time, seq.first_token_time, seq.finish_time),
            num_generated_tokens=seq.num_output_tokens,
            num_cached_tokens=seq.num_cached_prompt_tokens or 0,
            history=history,
            num_text_pieces=len(history.text_pieces),
            new_prompt_logprobs=new_prompt_logprobs,
        )
