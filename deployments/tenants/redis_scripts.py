"""The Redis store's Lua scripts: each multi-key update is one script, which Redis runs atomically, so
router replicas sharing one Redis never interleave their reads and writes.

The keys are the store's per-tenant keys (redis_store.py draws the layout); every one carries the
tenant's hash tag, so on a Redis Cluster a script's keys share one slot. Optional limits arrive as ''.
Counts and money are added with HINCRBY from the arguments' strings: exact int64. Only the budget
comparison runs in Lua numbers (doubles): exact up to 2^53 pico-USD (about 9,000 USD) in a period,
off by a few pico-USD above that.
"""

from __future__ import annotations

__all__ = ["ADMIT", "SETTLE"]

# KEYS: window, reservations, spend (the reservation's period).
# ARGV: now, reservation id, reservation's held value ('<expires_at>|<cost>'), tokens, cost,
#       max_concurrent_requests, requests_per_minute, tokens_per_minute, budget, window TTL (seconds).
# Returns {refusal, window requests, window tokens}: refusal 0 when admitted (the counts then include
# this request), else 1 + the refusing limit's index in _store_rules.REFUSALS.
ADMIT = """
local now = tonumber(ARGV[1])
local in_flight, reserved = 0, 0
local held = redis.call('HGETALL', KEYS[2])
for i = 1, #held, 2 do
    local expires_at, cost = string.match(held[i + 1], '^(.-)|(.*)$')
    if tonumber(expires_at) <= now then
        redis.call('HDEL', KEYS[2], held[i])
    else
        in_flight = in_flight + 1
        reserved = reserved + tonumber(cost)
    end
end
local counts = redis.call('HMGET', KEYS[1], 'requests', 'tokens')
local requests, tokens = tonumber(counts[1] or 0), tonumber(counts[2] or 0)
-- A reservation already held (a call retried after its reply was lost) is not counted twice.
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
    return {0, requests, tokens}
end
local spent = tonumber(redis.call('HGET', KEYS[3], 'total_cost_pico_usd') or 0)
local refusal = 0
if ARGV[6] ~= '' and in_flight >= tonumber(ARGV[6]) then
    refusal = 1
elseif ARGV[7] ~= '' and requests >= tonumber(ARGV[7]) then
    refusal = 2
elseif ARGV[8] ~= '' and tokens + tonumber(ARGV[4]) > tonumber(ARGV[8]) then
    refusal = 3
elseif ARGV[9] ~= '' and spent + reserved + tonumber(ARGV[5]) > tonumber(ARGV[9]) then
    refusal = 4
end
if refusal > 0 then
    return {refusal, requests, tokens}
end
requests = redis.call('HINCRBY', KEYS[1], 'requests', 1)
tokens = redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[10])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return {0, requests, tokens}
"""

# KEYS: reservations, spend (the reservation's period), window (the reservation's).
# ARGV: reservation id, now, model, prompt tokens, completion tokens, cost, window token delta
#       ('' when the reservation's window is no longer the current one).
# Returns 1 when settled; 0 when the reservation was not held (settled before, or expired).
# Deleting the field is what makes a settle count once: a retry finds it gone and adds nothing.
SETTLE = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held then
    return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
if tonumber(string.match(held, '^(.-)|')) <= tonumber(ARGV[2]) then
    return 0
end
redis.call('HINCRBY', KEYS[2], 'requests:' .. ARGV[3], 1)
redis.call('HINCRBY', KEYS[2], 'prompt_tokens:' .. ARGV[3], ARGV[4])
redis.call('HINCRBY', KEYS[2], 'completion_tokens:' .. ARGV[3], ARGV[5])
redis.call('HINCRBY', KEYS[2], 'cost_pico_usd:' .. ARGV[3], ARGV[6])
redis.call('HINCRBY', KEYS[2], 'total_cost_pico_usd', ARGV[6])
-- A window that expired (or was never counted here) is left alone rather than recreated without a TTL.
if ARGV[7] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('HINCRBY', KEYS[3], 'tokens', ARGV[7])
end
return 1
"""
