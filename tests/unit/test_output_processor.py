"""OutputProcessor: logprobs and top logprobs reach RequestOutput in full and as per-step deltas."""

from __future__ import annotations

from engine.config import EngineConfig
from engine.core.output_processor import OutputProcessor
from engine.core.scheduler import Scheduler
from engine.core.sequence import Sequence
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.step_data import SampledTokens


def top_of(token_id: int) -> list[tuple[int, float]]:
    """A made-up top-2 for a step that chose `token_id`."""
    return [(token_id, -0.25), (token_id + 1, -1.5)]


def run_steps(params: list[SamplingParams], token_ids: list[int]) -> list[list[RequestOutput]]:
    """Runs one request per entry of `params` through the scheduler and the output processor, the
    "model" sampling token_ids[i] for every request at step i. Returns each step's outputs."""
    scheduler = Scheduler(EngineConfig(model="unused"), num_kv_blocks=64, max_model_len=1024, eos_token_ids=set())
    processor = OutputProcessor(scheduler, tokenizer=None)
    params_by_id = {f"r{i}": request_params for i, request_params in enumerate(params)}
    for request_id, request_params in params_by_id.items():
        seq = Sequence(request_id=request_id, prompt_token_ids=[1, 2, 3], params=request_params, seed=0)
        scheduler.add(seq)
        processor.add(seq)
    steps: list[list[RequestOutput]] = []
    for token_id in token_ids:
        batch = scheduler.schedule()
        sampled = SampledTokens(
            token_ids=[token_id] * len(batch.chunks),
            logprobs=[-0.25] * len(batch.chunks),
            top_logprobs=[top_of(token_id) if params_by_id[c.request_id].top_logprobs else [] for c in batch.chunks],
        )
        steps.append(processor.process(scheduler.update(batch, sampled)))
    return steps


def test_top_logprobs_accumulate_and_each_step_reports_its_delta() -> None:
    params = SamplingParams(max_tokens=3, logprobs=True, top_logprobs=2)
    steps = run_steps([params], [40, 50, 60])

    outputs = [step[0] for step in steps]
    assert [o.new_top_logprobs for o in outputs] == [[top_of(40)], [top_of(50)], [top_of(60)]]
    assert [o.top_logprobs for o in outputs] == [
        [top_of(40)],
        [top_of(40), top_of(50)],
        [top_of(40), top_of(50), top_of(60)],
    ]
    assert outputs[-1].logprobs == [-0.25] * 3
    assert outputs[-1].finished


def test_requests_that_asked_for_no_top_logprobs_report_empty_lists() -> None:
    asking = SamplingParams(max_tokens=2, logprobs=True, top_logprobs=2)
    logprobs_only = SamplingParams(max_tokens=2, logprobs=True)
    neither = SamplingParams(max_tokens=2)
    steps = run_steps([asking, logprobs_only, neither], [40, 50])

    final = {output.request_id: output for output in steps[-1]}
    assert final["r0"].top_logprobs == [top_of(40), top_of(50)]
    assert (final["r1"].logprobs, final["r1"].top_logprobs, final["r1"].new_top_logprobs) == ([-0.25, -0.25], [], [])
    assert (final["r2"].logprobs, final["r2"].top_logprobs, final["r2"].new_top_logprobs) == ([], [], [])


def test_outputs_share_the_requests_history_instead_of_copying_it_each_step() -> None:
    params = SamplingParams(max_tokens=3, logprobs=True)
    outputs = [step[0] for step in run_steps([params], [40, 50, 60])]

    # One history, appended to by the engine: each output reads its own prefix of it.
    assert all(output.history.token_ids is outputs[0].history.token_ids for output in outputs)
    assert [output.num_generated_tokens for output in outputs] == [1, 2, 3]
    assert [output.token_ids for output in outputs] == [[40], [40, 50], [40, 50, 60]]
    assert [output.new_token_ids for output in outputs] == [[40], [50], [60]]
    assert outputs[0].logprobs == [-0.25]
