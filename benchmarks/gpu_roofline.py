"""Memory-bandwidth arithmetic: the fastest a batch-1 decode can go is bandwidth / bytes read per token.

At batch 1 every decode step reads every weight once (the check's models tie the LM head to the
embedding, so that matrix is read once too) plus the keys and values of the context, and does
2 FLOP per weight (1 per byte in bfloat16): far below any accelerator's FLOP/byte balance, so the
step is bound by memory, and `bandwidth / bytes_per_token` is its ceiling. Torch-free.
"""

from __future__ import annotations

__all__ = [
    "DATASHEET_BANDWIDTH",
    "copy_bandwidth",
    "datasheet_bandwidth",
    "decode_bytes_per_token",
    "decode_tokens_per_s",
    "roofline_tokens_per_s",
]

# Bytes/s of HBM by the vendor's datasheets (SXM parts), keyed by a substring of the device name.
DATASHEET_BANDWIDTH: dict[str, float] = {"H200": 4.8e12, "H100": 3.35e12}


def copy_bandwidth(num_bytes: int, num_copies: int, seconds: float) -> float:
    """Bytes/s moved by `num_copies` copies of `num_bytes`: each reads and writes every byte."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return 2 * num_bytes * num_copies / seconds


def datasheet_bandwidth(device_name: str) -> float | None:
    """The datasheet figure for a device whose name contains a known part, else None."""
    return next((value for part, value in DATASHEET_BANDWIDTH.items() if part in device_name), None)


def decode_bytes_per_token(weight_bytes: int, kv_bytes_per_token: int, mean_context_tokens: float) -> float:
    """Bytes one batch-1 decode step reads: every weight, and the context's keys and values."""
    return weight_bytes + kv_bytes_per_token * mean_context_tokens


def roofline_tokens_per_s(bytes_per_token: float, bandwidth: float) -> float:
    if bytes_per_token <= 0:
        raise ValueError(f"bytes_per_token must be > 0, got {bytes_per_token}")
    return bandwidth / bytes_per_token


def decode_tokens_per_s(num_tokens: int, first_token_s: float, finish_s: float) -> float:
    """Decode rate of one request: the tokens after the first (which the prefill makes), over the
    time from the first token to the last."""
    if num_tokens < 2 or finish_s <= first_token_s:
        raise ValueError(f"need >= 2 tokens over a positive time, got {num_tokens} in {finish_s - first_token_s}s")
    return (num_tokens - 1) / (finish_s - first_token_s)
