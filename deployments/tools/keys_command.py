"""`switchyard keys create|list|revoke`: API keys, on the tenants store directly.

    switchyard keys create --config manifests/tenants.yaml --tenant team-a --expires-in 30d
    switchyard keys list   --config manifests/tenants.yaml [--tenant team-a]
    switchyard keys revoke --config manifests/tenants.yaml <key id>

`--config` reads the store's URL (and the tenants a key may belong to) from a serve config's
`auth` section; `--store <url>` names a store instead. A Redis password comes from the URL or, where
it names none, from `auth.store_password_env` (SWITCHYARD_STORE_PASSWORD by default). A created key
is printed once, on stdout; only its hash is stored. Revocations reach every router replica within
`auth.key_cache_ttl_s`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path

import yaml
from pydantic import ValidationError

from deployments.config import AppConfig, AuthSettings
from deployments.tenants.key_admin import create_key, key_json
from deployments.tenants.store import StoreUnavailableError, TenantStore, open_auth_store
from deployments.tools.serve_files import BUILD_APP

__all__ = ["add_keys_parser", "run_keys"]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_keys_parser(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="create, list or revoke API keys")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="create a key for a tenant (printed once)")
    list_ = actions.add_parser("list", help="list keys (never the keys themselves)")
    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    for action in (create, list_, revoke):
        where = action.add_mutually_exclusive_group(required=True)
        where.add_argument("--config", type=Path, help="serve config whose auth.store to use")
        where.add_argument("--store", help="store URL: sqlite:///<path> or redis://<host>:<port>/<db>")
        action.add_argument("--json", action="store_true", help="print JSON")
    create.add_argument("--tenant", required=True, help="the tenant the key belongs to")
    create.add_argument("--description", default="", help="what the key is for")
    create.add_argument("--expires-in", type=_duration, default=None, help="e.g. 3600s, 90m, 12h, 30d; default never")
    list_.add_argument("--tenant", default=None, help="only this tenant's keys")
    revoke.add_argument("key_id", help="the key's id (the part after sy-)")


def run_keys(args: argparse.Namespace) -> int:
    try:
        auth, tenants = _auth_and_tenants(args)
    except ValueError as error:
        print(f"switchyard keys: {error}", file=sys.stderr)
        return 1
    store = open_auth_store(auth)
    try:
        return asyncio.run(_run(args, store, tenants))
    except StoreUnavailableError as error:
        print(f"switchyard keys: the store {auth.store} is unreachable: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"switchyard keys: {error}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, store: TenantStore, tenants: list[str] | None) -> int:
    try:
        now = time.time()
        if args.keys_command == "create":
            key, record = await create_key(
                store,
                args.tenant,
                known_tenants=tenants,
                description=args.description,
                expires_in_s=args.expires_in,
                now=now,
            )
            if args.json:
                print(json.dumps(key_json(record, now) | {"key": key.key}))
            else:
                print(key.key)
                print(
                    f"key id {record.key_id} for tenant {record.tenant}: store the key now, it is not shown again",
                    file=sys.stderr,
                )
            return 0
        if args.keys_command == "list":
            records = [key_json(record, now) for record in await store.list_keys(args.tenant)]
            print(json.dumps(records, indent=2) if args.json else _table(records))
            return 0
        if not await store.revoke_key(args.key_id, now):
            print(f"switchyard keys: no key {args.key_id!r}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id}")
        return 0
    finally:
        await store.close()


def _auth_and_tenants(args: argparse.Namespace) -> tuple[AuthSettings, list[str] | None]:
    """The store's settings and the tenants a key may name (None with --store: not checked)."""
    if args.store is not None:
        return AuthSettings(store=args.store), None
    try:
        document = yaml.safe_load(args.config.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read {args.config}: {error}") from None
    applications = document.get("applications") if isinstance(document, dict) else None
    ours = [app for app in applications or [] if isinstance(app, dict) and app.get("import_path") == BUILD_APP]
    for application in ours:
        try:
            config = AppConfig.model_validate(application.get("args") or {})
        except ValidationError as error:
            raise ValueError(
                f"{args.config}: not a valid serve config ({error.error_count()} problems; run "
                f"`switchyard check {args.config}`)"
            ) from None
        if config.auth.enabled:
            return config.auth, [tenant.name for tenant in config.tenants]
    raise ValueError(f"{args.config}: no application has auth.enabled")


def _duration(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"a duration like 3600s, 90m, 12h or 30d, got {text!r}")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def _table(records: list[dict]) -> str:
    if not records:
        return "no keys"
    lines = [f"{'KEY ID':<12} {'TENANT':<16} {'STATUS':<8} {'EXPIRES':<20} DESCRIPTION"]
    for record in records:
        expires = (
            "never"
            if record["expires_at"] is None
            else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record["expires_at"]))
        )
        lines.append(
            f"{record['key_id']:<12} {record['tenant']:<16} {record['status']:<8} {expires:<20} {record['description']}"
        )
    return "\n".join(lines)
