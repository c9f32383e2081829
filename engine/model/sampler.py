"""Per-request token choice inside one batch: grammar masks (structured output), repetition,
presence and frequency penalties, logit bias, banned tokens (min_tokens), greedy, temperature,
top-k, top-p, min-p, seeded noise; and the logprobs to report.

A random choice inverts the row's cumulative distribution, in token-id order, at one uniform number
per row: `u = derive_seed(request seed, n) / 2**53`-ish for the request's output position n. So a
request draws the same tokens whatever else shares its batch and however often it was preempted
and recomputed; the uniform follows the token (raising the drawn token's probability keeps the
draw); and a step costs a cumulative sum per row rather than a vocabulary of random numbers.

Reported logprobs (of the chosen token and the top alternatives) are always those of the model's
unmodified distribution: grammar masks, penalties, biases, bans, temperature, top-k, top-p and min-p only steer
the choice. Each step touches only the rows that use a setting; the others keep their logits bit
for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from engine.sampling_params import SamplingParams
from engine.seeds import derive_seed
from engine.step_data import PromptLogprob, SampledTokens, SchedulerOutput

__all__ = [
    "Sampler",
    "SamplingRow",
    "apply_grammar_masks",
    "apply_logit_bias",
    "apply_penalties",
    "apply_repetition_penalty",
    "ban_tokens",
    "output_token_counts",
    "score_prompt_tokens",
    "uniform_for",
]


@dataclass(frozen=True)
class SamplingRow:
    """What the sampler knows of the request behind one logits row."""

    # The request's sampling settings.
    params: SamplingParams
    # Seed of the request's random choices.
    seed: int
    # Tokens the request generated before this one: selects this output position's uniform.
    num_output_tokens: int
    # Those tokens' ids, for the presence, frequency and repetition penalties; empty when the
    # request has no penalty (nothing reads them then, so the scheduler does not copy them).
    output_token_ids: list[int] = field(default_factory=list)
    # The prompt's token ids, for the repetition penalty; empty without one.
    prompt_token_ids: list[int] = field(default_factory=list)
    # Token ids this row may not choose (end-of-sequence and stop tokens before min_tokens).
    banned_token_ids: list[int] = field(default_factory=list)
    # With structured output: the tokens its grammar allows (a bitmask row, see ScheduledChunk).
    allowed_token_bitmask: bytes | None = None


def uniform_for(request_seed: int, output_position: int) -> float:
    """The uniform number in [0, 1) that picks a request's token at one output position."""
    return (derive_seed(request_seed, output_position) >> 10) / 2.0**53  # 53 bits: exact in float64


def output_token_counts(token_id_lists: list[list[int]], vocab_size: int, device: torch.device) -> torch.Tensor:
    """R lists of token ids -> (R, V) float32 counts: [r, t] = occurrences of t in list r."""
    num_rows = len(token_id_lists)
    lengths = torch.tensor([len(token_ids) for token_ids in token_id_lists], device=device)  # (R,)
    row_index = torch.repeat_interleave(torch.arange(num_rows, device=device), lengths)  # (L,) all lists packed
    token_ids = torch.tensor([t for token_ids in token_id_lists for t in token_ids], dtype=torch.long, device=device)
    counts = torch.zeros(num_rows * vocab_size, device=device)
    counts.scatter_add_(0, row_index * vocab_size + token_ids, torch.ones(len(token_ids), device=device))
    return counts.view(num_rows, vocab_size)


def apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """logits (N, V) -> logits less each row's presence and frequency penalties.

    With c = counts of the row's generated tokens: logits - frequency_penalty * c -
    presence_penalty * (c > 0). Rows without a penalty keep their logits bit for bit; the input
    is never modified.
    """
    penalized = [i for i, row in enumerate(rows) if row.params.has_penalties]
    if not penalized:
        return logits
    device = logits.device
    counts = output_token_counts([rows[i].output_token_ids for i in penalized], logits.shape[-1], device)  # (R, V)
    frequency = torch.tensor([rows[i].params.frequency_penalty for i in penalized], device=device)  # (R,)
    presence = torch.tensor([rows[i].params.presence_penalty for i in penalized], device=device)  # (R,)
    penalties = frequency[:, None] * counts + presence[:, None] * (counts > 0)  # (R, V)
    return logits.index_add(0, torch.tensor(penalized, device=device), penalties, alpha=-1)


def apply_repetition_penalty(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """logits (N, V) -> the same with each row's repetition penalty on the tokens of its prompt and
    output: a positive logit divided by the penalty, a negative one multiplied (Hugging Face's
    RepetitionPenaltyLogitsProcessor). The input is never modified."""
    penalized = [i for i, row in enumerate(rows) if row.params.has_repetition_penalty]
    if not penalized:
        return logits
    device = logits.device
    seen = torch.zeros(len(penalized), logits.shape[-1], dtype=torch.bool, device=device)  # (R, V)
    for r, i in enumerate(penalized):
        token_ids = rows[i].prompt_token_ids + rows[i].output_token_ids
        seen[r, torch.tensor(token_ids, dtype=torch.long, device=device)] = True
    penalty = torch.tensor([rows[i].params.repetition_penalty for i in penalized], device=device)[:, None]  # (R, 1)
    index = torch.tensor(penalized, device=device)
    rows_logits = logits[index]  # (R, V)
    scaled = torch.where(rows_logits < 0, rows_logits * penalty, rows_logits / penalty)
    return logits.index_copy(0, index, torch.where(seen, scaled, rows_logits))


def apply_logit_bias(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """logits (N, V) -> the same plus each row's logit_bias on its tokens. The input is never modified."""
    biased = [i for i, row in enumerate(rows) if row.params.logit_bias]
    if not biased:
        return logits
    device = logits.device
    bias = torch.zeros(len(biased), logits.shape[-1], device=device)  # (R, V)
    for r, i in enumerate(biased):
        token_ids = torch.tensor(list(rows[i].params.logit_bias), dtype=torch.long, device=device)
        bias[r, token_ids] = torch.tensor(list(rows[i].params.logit_bias.values()), device=device)
    return logits.index_add(0, torch.tensor(biased, device=device), bias)


def apply_grammar_masks(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """logits (N, V) -> the same with every token a row's grammar does not allow at -inf. Rows
    without a grammar keep their logits bit for bit; the input is never modified."""
    masked = [i for i, row in enumerate(rows) if row.allowed_token_bitmask is not None]
    if not masked:
        return logits
    device = logits.device
    vocab_size = logits.shape[-1]
    packed = bytearray(b"".join(rows[i].allowed_token_bitmask for i in masked))  # type: ignore[misc]
    words = torch.frombuffer(packed, dtype=torch.int32).view(len(masked), -1).to(device)  # (R, W), W = ceil(V / 32)
    bits = torch.arange(32, dtype=torch.int32, device=device)
    allowed = ((words[:, :, None] >> bits) & 1).flatten(1).bool()  # (R, 32 W)
    # Logits wider than the vocabulary the mask covers (a padded LM head): the rest is not allowed.
    allowed = torch.nn.functional.pad(allowed, (0, max(vocab_size - allowed.shape[1], 0)))[:, :vocab_size]  # (R, V)
    index = torch.tensor(masked, device=device)
    return logits.index_copy(0, index, logits[index].masked_fill(~allowed, float("-inf")))


def ban_tokens(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """logits (N, V) -> the same with each row's banned tokens at -inf. The input is never modified."""
    row_index = [i for i, row in enumerate(rows) for _ in row.banned_token_ids]
    if not row_index:
        return logits
    token_ids = [token_id for row in rows for token_id in row.banned_token_ids]
    banned = logits.clone()
    banned[torch.tensor(row_index), torch.tensor(token_ids)] = float("-inf")
    return banned


class Sampler:
    def sample(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SampledTokens:
        """logits (N, V), one row per entry of `rows` -> the chosen tokens with their logprobs and,
        for rows that asked, the top logprobs; all under the model's unmodified distribution."""
        logits = logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)  # (N, V) reported, before any penalty
        # Grammar masks, bias and bans first, then penalties: the order of HF's processors and of vLLM.
        logits = apply_grammar_masks(logits, rows)
        logits = apply_logit_bias(logits, rows)
        logits = ban_tokens(logits, rows)
        logits = apply_repetition_penalty(logits, rows)
        logits = apply_penalties(logits, rows)
        # max's indices, not argmax: the same first maximum, at about half the cost on CPU.
        chosen = logits.max(dim=-1).indices  # (N,) greedy choice for every row
        random_rows = [i for i, row in enumerate(rows) if not row.params.is_greedy]
        if random_rows:
            index = torch.tensor(random_rows, device=logits.device)
            chosen[index] = self._sample_random(logits[index], [rows[i] for i in random_rows])
        chosen_logprobs = logprobs.gather(-1, chosen[:, None]).squeeze(-1)
        return SampledTokens(
            token_ids=chosen.tolist(),
            logprobs=chosen_logprobs.tolist(),
            top_logprobs=self._top_logprobs(logprobs, rows),
        )

    @staticmethod
    def _top_logprobs(logprobs: torch.Tensor, rows: list[SamplingRow]) -> list[list[tuple[int, float]]]:
        """logprobs (N, V) -> per row, its `top_logprobs` most likely (token id, logprob), most
        likely first; [] for rows that asked for none. One topk over the rows that asked."""
        top: list[list[tuple[int, float]]] = [[] for _ in rows]
        asking = [i for i, row in enumerate(rows) if row.params.top_logprobs > 0]
        if not asking:
            return top
        k = min(max(rows[i].params.top_logprobs for i in asking), logprobs.shape[-1])
        values, token_ids = logprobs[torch.tensor(asking, device=logprobs.device)].topk(k, dim=-1)  # (R, k)
        for i, row_token_ids, row_values in zip(asking, token_ids.tolist(), values.tolist()):
            num_wanted = rows[i].params.top_logprobs
            top[i] = list(zip(row_token_ids[:num_wanted], row_values[:num_wanted]))
        return top

    def _sample_random(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """logits (R, V) of rows with temperature > 0 -> (R,) sampled token ids."""
        device = logits.device
        temperatures = torch.tensor([row.params.temperature for row in rows], device=device)
        scaled = _keep_top_k_top_p(logits / temperatures[:, None], rows)  # (R, V), dropped tokens -inf
        probs = torch.softmax(scaled, dim=-1, dtype=torch.float64)  # float64: cumulative sums stay exact
        cumulative = probs.cumsum(dim=-1)  # (R, V)
        total = cumulative[:, -1:]  # (R, 1), 1 up to rounding
        uniforms = torch.tensor(
            [uniform_for(row.seed, row.num_output_tokens) for row in rows], dtype=torch.float64, device=device
        )
        # Below the total, so the first cumulative sum above it is a token with probability > 0.
        targets = torch.minimum(uniforms[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
        drawn = torch.searchsorted(cumulative, targets, right=True).squeeze(-1)  # (R,)
        # A row with no finite mass left (every token masked or banned, or logits overflowed) has
        # nothing to draw from: it takes its most likely token rather than an index past the vocabulary.
        no_mass = ~(torch.isfinite(total.squeeze(-1)) & (total.squeeze(-1) > 0))
        return torch.where(no_mass, logits.max(dim=-1).indices, drawn)


def _keep_min_p(scaled: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """scaled logits (R, V) -> the same with tokens less likely than min_p x the most likely one
    at -inf (Hugging Face's MinPLogitsWarper): p / p_max = exp(logit - max logit), so no softmax."""
    limited = [i for i, row in enumerate(rows) if row.params.min_p > 0.0]
    if not limited:
        return scaled
    device = scaled.device
    index = torch.tensor(limited, device=device)
    rows_logits = scaled[index]  # (L, V)
    log_min_p = torch.tensor([math.log(rows[i].params.min_p) for i in limited], device=device)[:, None]
    too_unlikely = rows_logits - rows_logits.max(dim=-1, keepdim=True).values < log_min_p
    return scaled.index_copy(0, index, rows_logits.masked_fill(too_unlikely, float("-inf")))


def _keep_top_k_top_p(scaled: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """scaled logits (R, V) -> the same with tokens outside each row's top-k, top-p and min-p set
    to -inf.

    Only rows with a top-k or top-p < 1 are sorted; the others are returned as they are.
    """
    scaled = _keep_min_p(scaled, rows)
    vocab_size = scaled.shape[-1]
    limited = [i for i, row in enumerate(rows) if row.params.top_k or row.params.top_p < 1.0]
    if not limited:
        return scaled
    device = scaled.device
    index = torch.tensor(limited, device=device)
    sorted_logits, sorted_ids = scaled[index].sort(dim=-1, descending=True)  # (L, V)

    # top-k: drop ranks >= k (k = 0 keeps all).
    top_k = torch.tensor([min(rows[i].params.top_k or vocab_size, vocab_size) for i in limited], device=device)
    ranks = torch.arange(vocab_size, device=device)[None, :]
    sorted_logits = sorted_logits.masked_fill(ranks >= top_k[:, None], float("-inf"))

    # top-p: drop a token when the mass before it already reaches top_p (the top one stays).
    # top_p = 1 keeps everything: float rounding can push the running sum past 1.
    top_p = torch.tensor([rows[i].params.top_p if rows[i].params.top_p < 1.0 else float("inf") for i in limited])
    sorted_probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_logits = sorted_logits.masked_fill(mass_before >= top_p.to(device)[:, None], float("-inf"))

    kept = scaled.clone()
    kept[index] = torch.empty_like(sorted_logits).scatter_(-1, sorted_ids, sorted_logits)  # back to token order
    return kept


def score_prompt_tokens(logits: torch.Tensor, batch: SchedulerOutput) -> list[list[PromptLogprob]]:
    """logits (M, V) at the batch's prompt-scoring positions (chunk order) -> per chunk that has
    prompt_logprob_targets, each target's logprob and the chunk's prompt_top_logprobs most likely
    (token id, logprob) at its position, under the model's distribution."""
    scoring = [chunk for chunk in batch.chunks if chunk.prompt_logprob_targets]
    if not scoring:
        return []
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (M, V)
    targets = torch.tensor([t for chunk in scoring for t in chunk.prompt_logprob_targets], device=logits.device)
    target_logprobs = logprobs.gather(-1, targets[:, None]).squeeze(-1).tolist()  # (M,)
    k = max(chunk.prompt_top_logprobs for chunk in scoring)
    top_values, top_ids = logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], logprobs[:, :0].long())  # (M, k)
    top_values_list, top_ids_list = top_values.tolist(), top_ids.tolist()
    scored: list[list[PromptLogprob]] = []
    row = 0
    for chunk in scoring:
        num_wanted = chunk.prompt_top_logprobs
        entries = []
        for _ in chunk.prompt_logprob_targets:
            top = list(zip(top_ids_list[row][:num_wanted], top_values_list[row][:num_wanted]))
            entries.append((target_logprobs[row], top))
            row += 1
        scored.append(entries)
    return scored
