"""The Lua scripts behind :class:`~scrapy_capsolver_ocr.state.redis_state.RedisState`, and where
its keys live.

Every decision that more than one process could race on (who solves an image, whether a
call fits the budget and the account's concurrency, whether a block is the first or the
second) is one script, so Redis runs it whole before any other command. Times come from
Redis's own clock (``TIME``), in milliseconds: the machines of a fleet may disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Every key and channel of fleet mode starts with this.
PREFIX = "capsolver:"
#: ... or, in a Redis Cluster, with this: a hash tag puts every key in one hash slot, since
#: the scripts read and write keys of a fleet and of its account together.
CLUSTER_PREFIX = "{capsolver}:"

_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Orders answers by use; exact in a double, and no two scripts run in one microsecond.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- An answer is stored as "<expiry in ms, 0: none>|<json>".
local function live_answer(hash, module, now)
  local stored = redis.call('HGET', hash, module)
  if not stored then return nil end
  local bar = string.find(stored, '|', 1, true)
  local expires = tonumber(string.sub(stored, 1, bar - 1))
  if expires > 0 and expires <= now then
    redis.call('HDEL', hash, module)
    return nil
  end
  return string.sub(stored, bar + 1)
end
"""


@dataclass(frozen=True)
class FleetKeys:
    """The keys of one fleet (answers, claims, budget, stop) and of one account (the calls
    in flight and blocks of everyone using that API key, named by its fingerprint)."""

    fleet: str
    account: str
    prefix: str = PREFIX

    @property
    def fleet_prefix(self) -> str:
        return f"{self.prefix}fleet:{self.fleet}:"

    @property
    def account_prefix(self) -> str:
        return f"{self.prefix}account:{self.account}:"

    def answers(self, sha256: str) -> str:
        return f"{self.fleet_prefix}answers:{sha256}"

    @property
    def answer_index(self) -> str:
        return f"{self.fleet_prefix}answer-index"

    def claim(self, key: str) -> str:
        return f"{self.fleet_prefix}claim:{key}"

    def outcome(self, key: str) -> str:
        return f"{self.fleet_prefix}outcome:{key}"

    @property
    def budget(self) -> str:
        return f"{self.fleet_prefix}budget"

    @property
    def stop(self) -> str:
        return f"{self.fleet_prefix}stop"

    @property
    def meta(self) -> str:
        return f"{self.fleet_prefix}meta"

    @property
    def solved_channel(self) -> str:
        return f"{self.fleet_prefix}solved"

    def breaker(self, provider: str) -> str:
        """The circuit breaker of one provider of the fleet (``CAPSOLVER_PROVIDERS``)."""
        return f"{self.fleet_prefix}breaker:{provider}"

    def provider_calls(self, provider: str) -> str:
        """The calls in flight to one provider from the fleet, for its ``fleet_concurrency``."""
        return f"{self.fleet_prefix}provider-calls:{provider}"

    @property
    def calls(self) -> str:
        return f"{self.account_prefix}calls"

    @property
    def blocks(self) -> str:
        return f"{self.account_prefix}blocks"

    @property
    def permits_channel(self) -> str:
        return f"{self.account_prefix}permits"


def split_key(key: str) -> tuple[str, str]:
    """An answer's key (``<sha256>:<module>``) as the image and the module."""
    sha256, _, module = key.partition(":")
    return sha256, module


class Script:
    """A Lua script; :meth:`bind` makes it redis-py's script object for one client, which
    sends it by its SHA-1 and loads it again when Redis lost it (a restart, a failover)."""

    def __init__(self, name: str, body: str) -> None:
        self.name = name
        self.source = _NOW + body

    def bind(self, client: Any) -> Any:
        return client.register_script(self.source)

    async def run(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        """Run once on ``client`` (the command line; a crawl binds its scripts once)."""
        return await self.bind(client)(keys, args)


# KEYS: answers hash, answer index. ARGV: module, index member.
CACHED = Script(
    "cached",
    """
local now = now_ms()
local answer = live_answer(KEYS[1], ARGV[1], now)
if not answer then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return false
end
redis.call('ZADD', KEYS[2], 'XX', now_us(), ARGV[2])
return answer
""",
)

# KEYS: claim, answers hash, outcome. ARGV: module, owner, lease ms.
CLAIM = Script(
    "claim",
    """
if live_answer(KEYS[2], ARGV[1], now_ms()) then return 0 end
if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then
  redis.call('DEL', KEYS[3])
  return 1
end
return 0
""",
)

# KEYS: claim, outcome, answers hash. ARGV: module.
# What a waiter finds: the claimant's outcome, a stored answer, a claim still held, or none.
CHECK = Script(
    "check",
    """
local outcome = redis.call('GET', KEYS[2])
if outcome then return {'outcome', outcome} end
local answer = live_answer(KEYS[3], ARGV[1], now_ms())
if answer then return {'answer', answer} end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'claimed'} end
return {'none'}
""",
)

# KEYS: claim, outcome, answers hash, answer index.
# ARGV: owner, module, index member, answer json (empty: none to store), outcome json,
#       lease ms, cache size, cache ttl ms, channel, key, answers key prefix.
FINISH = Script(
    "finish",
    """
local now = now_ms()
local size, ttl = tonumber(ARGV[7]), tonumber(ARGV[8])
if ARGV[4] ~= '' and size > 0 then
  local existed = redis.call('EXISTS', KEYS[3])
  local expires = 0
  if ttl > 0 then expires = now + ttl end
  redis.call('HSET', KEYS[3], ARGV[2], expires .. '|' .. ARGV[4])
  if ttl > 0 then
    local left = redis.call('PTTL', KEYS[3])
    if existed == 0 or (left >= 0 and left < ttl) then redis.call('PEXPIRE', KEYS[3], ttl) end
  else
    redis.call('PERSIST', KEYS[3])
  end
  redis.call('ZADD', KEYS[4], now_us(), ARGV[3])
  -- Unused for longer than the ttl: expired (an answer is used no earlier than stored).
  if ttl > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now_us() - ttl * 1000) end
  local extra = redis.call('ZCARD', KEYS[4]) - size
  if extra > 0 then
    for _, member in ipairs(redis.call('ZRANGE', KEYS[4], 0, extra - 1)) do
      local colon = string.find(member, ':', 1, true)
      local image, module = string.sub(member, 1, colon - 1), string.sub(member, colon + 1)
      redis.call('HDEL', ARGV[11] .. image, module)
      redis.call('ZREM', KEYS[4], member)
    end
  end
end
-- A claim taken over after this one lapsed is the new claimant's: leave it.
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[5] ~= '' then redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[6]) end
redis.call('PUBLISH', ARGV[9], ARGV[10] .. '\\n' .. ARGV[5])
return 1
""",
)

# KEYS: answers hash, answer index. ARGV: image sha256.
FORGET = Script(
    "forget",
    """
for _, module in ipairs(redis.call('HKEYS', KEYS[1])) do
  redis.call('ZREM', KEYS[2], ARGV[1] .. ':' .. module)
end
redis.call('DEL', KEYS[1])
return 1
""",
)

# KEYS: stop, blocks, budget, calls. ARGV: max tasks, period ms, fleet concurrency, lease ms,
# call id.
BEGIN_CALL = Script(
    "begin_call",
    """
local now = now_ms()
local reason = redis.call('GET', KEYS[1])
if reason then return {'stop', reason} end
local paused = tonumber(redis.call('HGET', KEYS[2], 'paused_until') or '0')
if paused > now then return {'pause', paused - now} end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local cap = tonumber(ARGV[3])
if cap > 0 and redis.call('ZCARD', KEYS[4]) >= cap then
  local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  return {'wait', tonumber(first[2]) - now}
end
local length = tonumber(ARGV[2])
local period = 0
if length > 0 then period = math.floor(now / length) end
if tonumber(redis.call('HGET', KEYS[3], 'period') or '-1') ~= period then
  redis.call('HSET', KEYS[3], 'period', period, 'used', 0)
end
redis.call('HSET', KEYS[3], 'limit', ARGV[1], 'period_ms', length)
local limit = tonumber(ARGV[1])
if limit > 0 and tonumber(redis.call('HGET', KEYS[3], 'used')) >= limit then
  return {'stop', 'capsolver_max_tasks'}
end
redis.call('HINCRBY', KEYS[3], 'used', 1)
-- A budget per period outlives its period a little, then goes: nothing to reset by hand.
if length > 0 then redis.call('PEXPIRE', KEYS[3], 2 * length) end
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[4]), ARGV[5])
return {'ok', tonumber(redis.call('HGET', KEYS[2], 'epoch') or '0')}
""",
)

# KEYS: calls. ARGV: call id, permits channel (empty: nobody waits for permits).
END_CALL = Script(
    "end_call",
    """
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[1]) end
return 1
""",
)

# KEYS: blocks, stop. ARGV: the call's epoch (-1: a call without one), pause ms, window ms.
BLOCKED = Script(
    "blocked",
    """
local now = now_ms()
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until') or '0')
local mine = tonumber(ARGV[1])
if (mine < 0 and paused > now) or (mine >= 0 and mine < epoch) then return {'late'} end
local pause, window = tonumber(ARGV[2]), tonumber(ARGV[3])
local last = tonumber(redis.call('HGET', KEYS[1], 'last_block') or '-1')
if last >= 0 and now - last <= window then
  redis.call('SET', KEYS[2], 'capsolver_blocked', 'PX', math.max(window + pause, 1000))
  return {'stop', 'capsolver_blocked'}
end
redis.call('HSET', KEYS[1], 'epoch', epoch + 1, 'last_block', now, 'paused_until', now + pause)
redis.call('PEXPIRE', KEYS[1], window + pause + 60000)
return {'pause', pause}
""",
)

# KEYS: claims this process holds..., then calls. ARGV: owner, lease ms, number of claims,
# call ids...
RENEW = Script(
    "renew",
    """
local now = now_ms()
local lease, claims = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, claims do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('PEXPIRE', KEYS[i], lease) end
end
for i = 4, #ARGV do redis.call('ZADD', KEYS[claims + 1], 'XX', now + lease, ARGV[i]) end
return 1
""",
)

# KEYS: budget, calls, blocks, stop, answer index. ARGV: period ms (-1: the one last used).
FIGURES = Script(
    "figures",
    """
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
local length = tonumber(ARGV[1])
if length < 0 then length = tonumber(redis.call('HGET', KEYS[1], 'period_ms') or '0') end
local resets = -1
if length > 0 then
  if tonumber(redis.call('HGET', KEYS[1], 'period') or '-1') ~= math.floor(now / length) then
    used = 0
  end
  resets = length - now % length
end
local paused = tonumber(redis.call('HGET', KEYS[3], 'paused_until') or '0') - now
return {used, tonumber(redis.call('HGET', KEYS[1], 'limit') or '0'), resets,
  redis.call('ZCARD', KEYS[2]), math.max(paused, 0), redis.call('GET', KEYS[4]) or '',
  redis.call('ZCARD', KEYS[5])}
""",
)


def figures_keys(keys: FleetKeys) -> list[str]:
    """The KEYS of :data:`FIGURES` for one fleet."""
    return [keys.budget, keys.calls, keys.blocks, keys.stop, keys.answer_index]


# KEYS: budget.
RESET_BUDGET = Script(
    "reset_budget",
    """
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'used', 0) end
return used
""",
)


# KEYS: breaker. ARGV: probe lease ms. Closed (no key), open (cooling down, or a probe of
# another caller under way), or probe: this caller sends the one task that tries it again.
ROUTE_LEAVE = Script(
    "route_leave",
    """
local open = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '-1')
if open < 0 then return 'closed' end
local now = now_ms()
local probe = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0')
if now < open or now < probe then return 'open' end
redis.call('HSET', KEYS[1], 'probe_until', now + tonumber(ARGV[1]))
return 'probe'
""",
)

# KEYS: breaker. -1: closed; else the ms its cool-down still lasts (0: a probe may go).
ROUTE_OPEN_FOR = Script(
    "route_open_for",
    """
local open = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '-1')
if open < 0 then return -1 end
return math.max(open - now_ms(), 0)
""",
)

# KEYS: breaker. ARGV: cool-down ms, key lifetime ms. 1: it was closed (a new opening).
ROUTE_FAILED = Script(
    "route_failed",
    """
local existed = redis.call('EXISTS', KEYS[1])
redis.call('HSET', KEYS[1], 'open_until', now_ms() + tonumber(ARGV[1]), 'probe_until', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if existed == 1 then return 0 end
return 1
""",
)

# KEYS: provider calls. ARGV: cap, lease ms, call id. 1: a permit was taken.
PROVIDER_PERMIT = Script(
    "provider_permit",
    """
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
""",
)
