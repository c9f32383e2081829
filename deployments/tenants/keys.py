"""API keys: `sy-<key id>-<secret>`, random, shown once, stored only as a hash.

The key id (10 base-32 characters) is public: listings, logs and revocations name it, and the
Router finds the key's record by it. The secret is 32 random bytes (256 bits) in URL-safe base64.
With that much entropy a plain SHA-256 is a sufficient hash (no salt or slow hash needed: nothing
can be guessed), and the Router compares hashes with `hmac.compare_digest`, in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = ["KEY_PREFIX", "NewKey", "hash_key", "key_id_of", "matches", "new_key"]

KEY_PREFIX = "sy-"
_KEY_ID_CHARS = 10
_SECRET_BYTES = 32
_KEY = re.compile(rf"^{KEY_PREFIX}([a-z2-7]{{{_KEY_ID_CHARS}}})-([A-Za-z0-9_-]{{43}})$")


@dataclass(frozen=True)
class NewKey:
    key_id: str
    # The whole key: shown to its creator once, never stored or logged.
    key: str
    key_hash: str


def new_key() -> NewKey:
    key_id = base64.b32encode(secrets.token_bytes(8)).decode().lower()[:_KEY_ID_CHARS]
    secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).decode().rstrip("=")
    key = f"{KEY_PREFIX}{key_id}-{secret}"
    return NewKey(key_id=key_id, key=key, key_hash=hash_key(key))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The key id of a well-formed key; None for anything else (which no record can match)."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def matches(key: str, key_hash: str) -> bool:
    """Whether `key` hashes to `key_hash`, compared in constant time."""
    return hmac.compare_digest(hash_key(key), key_hash)
