"""Per-request token choice inside one batch: greedy, temperature, top-k, top-p, seeded noise.

Random choices use the exponential-race trick: with `noise ~ Exp(1)` per vocabulary entry,
`argmax(probs / noise)` is a draw from `probs`. The noise of a request at output position n comes
from a generator seeded by (request seed, n), so a request draws the same tokens whatever else
shares its batch and however often it was preempted and recomputed.
"""

from __future__ import annotations

import hashlib

import torch

from engine.sampling_params import SamplingParams

__all__ = ["SamplingRow", "Sampler", "noise_seed"]

SamplingRow = tuple[SamplingParams, int, int]
"""(params, request seed, number of tokens the request generated before this one)."""


def noise_seed(request_seed: int, output_position: int) -> int:
    """A 63-bit generator seed for one request at one output position."""
    digest = hashlib.blake2b(f"{request_seed}:{output_position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class Sampler:
    def sample(self, logits: torch.Tensor, rows: list[SamplingRow]) -> tuple[list[int], list[float]]:
        """logits (N, V), one row per entry of `rows` -> (token ids, their logprobs).

        Logprobs are of the model's unmodified distribution (before temperature, top-k, top-p).
        """
        logits = logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)  # (N, V)
        chosen = logits.argmax(dim=-1)  # (N,) greedy choice for every row
        random_rows = [i for i, (params, _, _) in enumerate(rows) if not params.is_greedy]
        if random_rows:
            index = torch.tensor(random_rows, device=logits.device)
            chosen[index] = self._sample_random(logits[index], [rows[i] for i in random_rows])
        chosen_logprobs = logprobs.gather(-1, chosen[:, None]).squeeze(-1)
        return chosen.tolist(), chosen_logprobs.tolist()

    def _sample_random(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """logits (R, V) of rows with temperature > 0 -> (R,) sampled token ids."""
        device = logits.device
        temperatures = torch.tensor([params.temperature for params, _, _ in rows], device=device)
        scaled = logits / temperatures[:, None]
        sorted_logits, sorted_ids = scaled.sort(dim=-1, descending=True)  # (R, V)
        vocab_size = logits.shape[-1]

        # top-k: drop ranks >= k (k = 0 keeps all).
        top_k = torch.tensor([params.top_k or vocab_size for params, _, _ in rows], device=device)
        ranks = torch.arange(vocab_size, device=device)[None, :]
        sorted_logits = sorted_logits.masked_fill(ranks >= top_k[:, None], float("-inf"))

        # top-p: drop a token when the mass before it already reaches top_p (the top one stays).
        # top_p = 1 keeps everything: float rounding can push the running sum past 1.
        top_p = torch.tensor([params.top_p if params.top_p < 1.0 else float("inf") for params, _, _ in rows], device=device)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p[:, None], float("-inf"))
        sorted_probs = torch.softmax(sorted_logits, dim=-1)

        noise = torch.stack([self._noise(seed, position, vocab_size) for _, seed, position in rows])
        sorted_noise = noise.to(device).gather(-1, sorted_ids)  # noise follows the token, not the rank
        winner = (sorted_probs / sorted_noise).argmax(dim=-1, keepdim=True)  # (R, 1)
        return sorted_ids.gather(-1, winner).squeeze(-1)

    @staticmethod
    def _noise(request_seed: int, output_position: int, vocab_size: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(noise_seed(request_seed, output_position))
        return torch.empty(vocab_size).exponential_(generator=generator)  # (V,)
