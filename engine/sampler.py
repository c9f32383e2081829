"""Per-request token choice inside one batch: penalties, greedy, temperature, top-k, top-p, seeded
noise; and the logprobs to report.

Random choices use the exponential-race trick: with `noise ~ Exp(1)` per vocabulary entry,
`argmax(probs / noise)` is a draw from `probs`. The noise of a request at output position n comes
from a generator seeded by (request seed, n), so a request draws the same tokens whatever else
shares its batch and however often it was preempted and recomputed.

Reported logprobs (of the chosen token and the top alternatives) are always those of the model's
unmodified distribution: penalties, temperature, top-k and top-p only steer the choice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from engine.sampling_params import SamplingParams
from engine.scheduler import SampledTokens

__all__ = ["Sampler", "SamplingRow", "apply_penalties", "noise_seed", "output_token_counts"]


@dataclass(frozen=True)
class SamplingRow:
    """What the sampler knows of the request behind one logits row."""

    # The request's sampling settings.
    params: SamplingParams
    # Seed of the request's sampling noise.
    seed: int
    # Tokens the request generated before this one: selects this output position's noise.
    num_output_tokens: int
    # Those tokens' ids, for the presence and frequency penalties; empty when the request has no
    # penalty (nothing reads them then, so the scheduler does not copy them).
    output_token_ids: list[int] = field(default_factory=list)


def noise_seed(request_seed: int, output_position: int) -> int:
    """A 63-bit generator seed for one request at one output position."""
    digest = hashlib.blake2b(f"{request_seed}:{output_position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


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


class Sampler:
    def sample(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SampledTokens:
        """logits (N, V), one row per entry of `rows` -> the chosen tokens with their logprobs and,
        for rows that asked, the top logprobs; all under the model's unmodified distribution."""
        logits = logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)  # (N, V) reported, before any penalty
        logits = apply_penalties(logits, rows)
        chosen = logits.argmax(dim=-1)  # (N,) greedy choice for every row
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
        scaled = logits / temperatures[:, None]
        sorted_logits, sorted_ids = scaled.sort(dim=-1, descending=True)  # (R, V)
        vocab_size = logits.shape[-1]

        # top-k: drop ranks >= k (k = 0 keeps all).
        top_k = torch.tensor([min(row.params.top_k or vocab_size, vocab_size) for row in rows], device=device)
        ranks = torch.arange(vocab_size, device=device)[None, :]
        sorted_logits = sorted_logits.masked_fill(ranks >= top_k[:, None], float("-inf"))

        # top-p: drop a token when the mass before it already reaches top_p (the top one stays).
        # top_p = 1 keeps everything: float rounding can push the running sum past 1.
        top_p_values = [row.params.top_p if row.params.top_p < 1.0 else float("inf") for row in rows]
        top_p = torch.tensor(top_p_values, device=device)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p[:, None], float("-inf"))
        sorted_probs = torch.softmax(sorted_logits, dim=-1)

        noise = torch.stack([self._noise(row.seed, row.num_output_tokens, vocab_size) for row in rows])
        sorted_noise = noise.to(device).gather(-1, sorted_ids)  # noise follows the token, not the rank
        winner = (sorted_probs / sorted_noise).argmax(dim=-1, keepdim=True)  # (R, 1)
        return sorted_ids.gather(-1, winner).squeeze(-1)

    @staticmethod
    def _noise(request_seed: int, output_position: int, vocab_size: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(noise_seed(request_seed, output_position))
        return torch.empty(vocab_size).exponential_(generator=generator)  # (V,)
