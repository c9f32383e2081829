"""The /admin/ API: keys and usage for automation, behind the admin key.

    POST   /admin/keys              {"tenant", "description"?, "expires_in_s"?} -> the key, shown once
    GET    /admin/keys[?tenant=]    the keys (never their hashes)
    DELETE /admin/keys/{key_id}     revoke
    GET    /admin/usage[?tenant=]   each tenant's usage and limits, as GET /v1/usage shows its own

The admin key comes from the environment variable `auth.admin_key_env` on the router; unset, every
/admin/ call is refused. It is compared as a hash, in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from deployments.errors import AuthenticationError, InvalidRequestError, NotFoundError
from deployments.tenants.gate import TenantGate
from deployments.tenants.key_admin import create_key, key_json

__all__ = ["add_admin_routes"]

logger = logging.getLogger("ray.serve")


class CreateKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(description="The tenant the key belongs to (one of the serve config's tenants).")
    description: str = Field(default="", max_length=256, description="What the key is for.")
    expires_in_s: float | None = Field(default=None, gt=0, description="Seconds until the key expires; null: never.")


def add_admin_routes(app: FastAPI, gate: TenantGate, admin_key: str | None, admin_key_env: str) -> None:
    admin_hash = None if not admin_key else hashlib.sha256(admin_key.encode()).digest()

    def require_admin(request: Request) -> None:
        if admin_hash is None:
            raise AuthenticationError(f"The admin API is off: set {admin_key_env} in the router's environment.")
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(key.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, admin_hash):
            raise AuthenticationError("The /admin/ API needs the admin key (Authorization: Bearer <admin key>).")

    @app.post("/admin/keys", status_code=201)
    async def create(body: CreateKeyBody, request: Request) -> JSONResponse:
        require_admin(request)
        try:
            key, record = await create_key(
                gate.store,
                body.tenant,
                known_tenants=[tenant.name for tenant in gate.access.tenants],
                description=body.description,
                expires_in_s=body.expires_in_s,
                now=gate.clock(),
            )
        except ValueError as error:
            raise InvalidRequestError(str(error), param="tenant") from None
        logger.info("admin: created key %s for tenant %s", record.key_id, record.tenant)
        return JSONResponse(key_json(record, gate.clock()) | {"key": key.key}, status_code=201)

    @app.get("/admin/keys")
    async def list_keys(request: Request, tenant: str | None = None) -> dict[str, Any]:
        require_admin(request)
        now = gate.clock()
        return {"object": "list", "data": [key_json(record, now) for record in await gate.store.list_keys(tenant)]}

    @app.delete("/admin/keys/{key_id}")
    async def revoke(key_id: str, request: Request) -> dict[str, Any]:
        require_admin(request)
        gate.forget_key(key_id)
        if not await gate.store.revoke_key(key_id, gate.clock()):
            raise NotFoundError(f"No key {key_id!r}.", param="key_id", code="key_not_found")
        logger.info("admin: revoked key %s", key_id)
        record = await gate.store.get_key(key_id)
        return key_json(record, gate.clock()) if record is not None else {"key_id": key_id, "status": "revoked"}

    @app.get("/admin/usage")
    async def usage(request: Request, tenant: str | None = None) -> dict[str, Any]:
        require_admin(request)
        tenants = gate.access.tenants if tenant is None else [t for t in gate.access.tenants if t.name == tenant]
        if not tenants:
            raise InvalidRequestError(f"No tenant {tenant!r}.", param="tenant")
        return {"object": "list", "data": [await gate.usage(t) for t in tenants]}
