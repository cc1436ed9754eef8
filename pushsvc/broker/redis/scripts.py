"""The Lua scripts the Redis broker runs. Each one is atomic on the server.

Every key a script touches is passed in ``KEYS``; names come from :mod:`pushsvc.broker.keys`.
"""

from __future__ import annotations

from pushsvc.broker.redis.link import Script

#: Publish a chunk of messages. Per message, atomically and in order: XADD to each of its streams
#: (trimmed to exactly ``maxlen`` entries, the key's TTL renewed), INCR the bus sequence, PUBLISH
#: the envelope, and start the message's trail with its Published record. The envelope and the
#: record are concatenated here from pieces that are already JSON (the message, the record up to
#: its ``streams``, the stream names, the origin) and the new entry ids, so they decode as
#: :class:`pushsvc.types.Envelope` and :class:`pushsvc.broker.base.Published`.
#:
#: KEYS[1] the bus sequence; then per message: its trail, its stream keys.
#: ARGV[1] maxlen, ARGV[2] stream TTL (s), ARGV[3] bus channel, ARGV[4] origin as JSON; then per
#: message: its stream count n, the message JSON, the Published JSON cut before the value of
#: ``streams``, the trail's expiry (unix ms), its n stream names as JSON.
#: Returns the new entry ids (the offsets), flat, in stream key order.
PUBLISH = Script(
    "publish",
    """
local maxlen, ttl, channel, origin = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ids = {}
local k = 1
local a = 5
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  local message = ARGV[a + 1]
  k = k + 1
  local trail = KEYS[k]
  local offsets = {}
  for i = 1, n do
    k = k + 1
    local id = redis.call('XADD', KEYS[k], 'MAXLEN', maxlen, '*', 'm', message)
    redis.call('EXPIRE', KEYS[k], ttl)
    ids[#ids + 1] = id
    offsets[i] = ARGV[a + 3 + i] .. ':"' .. id .. '"'
  end
  local placed = '{' .. table.concat(offsets, ',') .. '}'
  local seq = redis.call('INCR', KEYS[1])
  redis.call('PUBLISH', channel, '{"message":' .. message .. ',"offsets":' .. placed ..
    ',"origin":' .. origin .. ',"seq":' .. string.format('%d', seq) .. '}')
  redis.call('HSETNX', trail, 'p', ARGV[a + 2] .. placed .. '}')
  redis.call('PEXPIREAT', trail, ARGV[a + 3])
  a = a + 4 + n
end
return ids
""",
)

#: Apply a batch of ledger records. Every write is "first wins", "highest wins" or a sum, so
#: records may arrive in any order (a Sent from one node before the Published from another).
#:
#: KEYS[i] the trail of record i. ARGV[1] the TTL (s) of a trail whose Published record has not
#: arrived yet; then five values per record, by kind:
#:   p: Published JSON, expire at (unix ms), -, -
#:   s: session, [device, node] JSON, sent_at, attempt
#:   a: session, [device, node] JSON, acked_at, device
#:   c: node, count, -, -
#: Returns the number of records.
LEDGER = Script(
    "ledger",
    """
local early = ARGV[1]
for i = 1, #KEYS do
  local key = KEYS[i]
  local a = 2 + (i - 1) * 5
  local kind = ARGV[a]
  if kind == 'p' then
    redis.call('HSETNX', key, 'p', ARGV[a + 1])
    redis.call('PEXPIREAT', key, ARGV[a + 2])
  else
    if kind == 's' then
      local session = ARGV[a + 1]
      redis.call('HSETNX', key, 'd:' .. session, ARGV[a + 2])
      redis.call('HSETNX', key, 's:' .. session, ARGV[a + 3])
      local field = 'n:' .. session
      if tonumber(ARGV[a + 4]) > (tonumber(redis.call('HGET', key, field)) or 0) then
        redis.call('HSET', key, field, ARGV[a + 4])
      end
    elseif kind == 'a' then
      local session = ARGV[a + 1]
      redis.call('HSETNX', key, 'd:' .. session, ARGV[a + 2])
      redis.call('HSETNX', key, 'a:' .. session, ARGV[a + 3])
      redis.call('HSETNX', key, 'k:' .. ARGV[a + 4], '1')
    elseif kind == 'c' then
      redis.call('HINCRBY', key, 'c:' .. ARGV[a + 1], ARGV[a + 2])
    end
    if redis.call('PTTL', key) < 0 then
      redis.call('EXPIRE', key, early)
    end
  end
end
return #KEYS
""",
)

#: Which trails record an ack by one device. KEYS: trails; ARGV[1]: the device.
#: Returns 1 or 0 per key (1: the trail has its Published record and the device acked).
ACKED = Script(
    "acked",
    """
local field = 'k:' .. ARGV[1]
local out = {}
for i = 1, #KEYS do
  if redis.call('HEXISTS', KEYS[i], 'p') == 1 and redis.call('HEXISTS', KEYS[i], field) == 1 then
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
""",
)

#: Claim an idempotency key. KEYS[1] the key; ARGV[1] the claim TTL (ms).
#: Returns nil when claimed now, else the stored value ("" while another claim is open).
CLAIM = Script(
    "claim",
    """
if redis.call('SET', KEYS[1], '', 'NX', 'PX', ARGV[1]) then
  return false
end
return redis.call('GET', KEYS[1])
""",
)
