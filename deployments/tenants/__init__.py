"""Tenants: API keys, their store (SQLite or Redis), limits, budgets and spend.

    keys.py          key generation, parsing, hashing, constant-time check
    store.py         the store's contract (TenantStore) and the records crossing it
    sqlite_store.py  the embedded store: one router replica on one node
    redis_store.py   the shared store: several router replicas, or a cluster
    accounting.py    prices, worst-case reservations, the rate-limit headers
    gate.py          the Router's checks: authenticate, authorize, admit, settle
    fair_queue.py    the Router's per-model queue, fair across tenants
"""
