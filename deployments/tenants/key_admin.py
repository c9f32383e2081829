"""Creating, listing and revoking keys: what `switchyard keys` and the /admin/ API both do."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from deployments.tenants.keys import NewKey, new_key
from deployments.tenants.store import KeyRecord, TenantStore

__all__ = ["create_key", "key_json"]


async def create_key(
    store: TenantStore,
    tenant: str,
    *,
    known_tenants: Collection[str] | None,
    description: str,
    expires_in_s: float | None,
    now: float,
) -> tuple[NewKey, KeyRecord]:
    """A new key for `tenant`, stored as its hash. ValueError naming the problem for an unknown
    tenant (when `known_tenants` is given) or a non-positive expiry."""
    if known_tenants is not None and tenant not in known_tenants:
        raise ValueError(f"tenant {tenant!r} is not in the serve config's tenants: {sorted(known_tenants)}")
    if expires_in_s is not None and not expires_in_s > 0:
        raise ValueError(f"expires_in_s must be > 0, got {expires_in_s}")
    key = new_key()
    record = KeyRecord(
        key_id=key.key_id,
        tenant=tenant,
        key_hash=key.key_hash,
        description=description,
        created_at=now,
        expires_at=None if expires_in_s is None else now + expires_in_s,
    )
    await store.create_key(record)
    return key, record


def key_json(record: KeyRecord, now: float) -> dict[str, Any]:
    """A key as listings show it: never its hash."""
    if record.revoked_at is not None:
        status = "revoked"
    elif record.expires_at is not None and now >= record.expires_at:
        status = "expired"
    else:
        status = "active"
    return {
        "key_id": record.key_id,
        "tenant": record.tenant,
        "description": record.description,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "revoked_at": record.revoked_at,
        "status": status,
    }
