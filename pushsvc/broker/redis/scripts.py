"""The Lua scripts the Redis broker runs. Each one is atomic on the server.

Every key a script touches is passed in ``KEYS``; names come from :mod:`pushsvc.broker.keys`.
"""

from __future__ import annotations

from pushsvc.broker.redis.link import Script

#: Publish a chunk of messages. Per message, atomically and in order: unless its idempotency key
#: is bound already, XADD to each of its streams (trimmed to exactly ``maxlen`` entries, the key's
#: TTL renewed) and publish one envelope per stream on that stream's channel, carrying the offset
#: of the stream's entry before it (``after``, "0-0" for a stream's first: per-stream gap
#: detection), then start the message's trail with its Published record and bind its key to its
#: placement. A message for several streams is stored once, in its body key, and its entries hold
#: only its id (field ``r`` instead of ``m``). The envelopes, the record and the placement are
#: concatenated here from pieces that are already JSON (the message, the record up to its
#: ``streams``, the stream names, the origin) and the new entry ids, so they decode as
#: :class:`pushsvc.types.Envelope`, :class:`pushsvc.broker.base.Published` and
#: :class:`pushsvc.broker.base.Placed`.
#:
#: With ARGV[3] empty the script announces nothing and returns each message's announcements
#: instead, for the caller to publish once ``WAIT`` confirmed the writes: a master that lost its
#: place in a failover (frozen, then back for a moment) must not show devices what it cannot
#: keep. A message whose key is bound already is announced again then (from its entries, same
#: offsets, when the request's fingerprint is the first one's): its first run may have stayed
#: unannounced.
#:
#: The script runs on the keys of one partition group (:mod:`pushsvc.broker.redis.partitions`):
#: on Redis Cluster a message for streams of several partitions is placed by one run per
#: partition, its home first (trail and idempotency key), then the others, each with its own
#: placement key in place of the idempotency key and no trail.
#:
#: KEYS per message: its trail (when it has one here), its idempotency or placement key (when
#: keyed), its stream keys, its body key (when stored apart).
#: ARGV[1] maxlen, ARGV[2] stream TTL (s), ARGV[3] the publish command (``PUBLISH``, or
#: ``SPUBLISH`` on Redis Cluster; empty: announce nothing), ARGV[4] origin as JSON, ARGV[5]
#: idempotency key TTL (ms); then per message: its stream count n, the message JSON, the
#: Published JSON cut before the value of ``streams``, the trail's expiry (unix ms), its id and
#: its request's fingerprint (plain: no quotes), its flags ("t": a trail key is given, "k": an
#: idempotency or placement key is), the body's expiry (unix
#: ms; "" to store the message in the entries), its n stream names as JSON, its n streams'
#: channels.
#: Returns two values per message: 0 and its placement JSON, or 1 and the placement its key was
#: bound to; with ARGV[3] empty a third: its announcements, [channel, envelope, …].
PUBLISH = Script(
    "publish",
    """
local maxlen, ttl, publish, origin, keep = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local defer = publish == ''
local out = {}
local function envelope(message, name, entry, after)
  return '{"message":' .. message .. ',"offsets":{' .. name .. ':"' .. entry .. '"},"origin":' ..
    origin .. ',"after":"' .. after .. '"}'
end
local k = 0
local a = 6
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  local message, id, body_at = ARGV[a + 1], ARGV[a + 4], ARGV[a + 7]
  local flags = ARGV[a + 6]
  local trail = nil
  if string.find(flags, 't', 1, true) then
    k = k + 1
    trail = KEYS[k]
  end
  local idem = nil
  if string.find(flags, 'k', 1, true) then
    k = k + 1
    idem = KEYS[k]
  end
  local streams = k
  k = k + n
  local body = nil
  if body_at ~= '' then
    k = k + 1
    body = KEYS[k]
  end
  local held = false
  if idem then
    held = redis.call('GET', idem)
  end
  if held then
    out[#out + 1] = 1
    out[#out + 1] = held
    if defer then
      local again = {}
      local record = cjson.decode(held)
      if record['fingerprint'] == ARGV[a + 5] then
        for i = 1, n do
          local key, name = KEYS[streams + i], ARGV[a + 7 + i]
          local offset = record['offsets'][cjson.decode(name)]
          local entry = offset and redis.call('XRANGE', key, offset, offset)[1]
          if entry then
            local stored = entry[2][2]
            if entry[2][1] == 'r' then
              stored = body and redis.call('GET', body)
            end
            if stored then
              local last = redis.call('XREVRANGE', key, '(' .. offset, '-', 'COUNT', 1)
              local after = last[1] and last[1][1] or '0-0'
              again[#again + 1] = ARGV[a + 7 + n + i]
              again[#again + 1] = envelope(stored, name, offset, after)
            end
          end
        end
      end
      out[#out + 1] = again
    end
  else
    local field, value = 'm', message
    if body then
      redis.call('SET', body, message, 'PXAT', body_at)
      field, value = 'r', id
    end
    local offsets = {}
    local announce = {}
    for i = 1, n do
      local key = KEYS[streams + i]
      local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
      local after = '0-0'
      if last[1] then
        after = last[1][1]
      end
      local entry = redis.call('XADD', key, 'MAXLEN', maxlen, '*', field, value)
      redis.call('EXPIRE', key, ttl)
      offsets[i] = ARGV[a + 7 + i] .. ':"' .. entry .. '"'
      local channel = ARGV[a + 7 + n + i]
      local text = envelope(message, ARGV[a + 7 + i], entry, after)
      if defer then
        announce[#announce + 1] = channel
        announce[#announce + 1] = text
      else
        redis.call(publish, channel, text)
      end
    end
    local placed = '{' .. table.concat(offsets, ',') .. '}'
    if trail then
      redis.call('HSETNX', trail, 'p', ARGV[a + 2] .. placed .. '}')
      redis.call('PEXPIREAT', trail, ARGV[a + 3])
    end
    local record = '{"id":"' .. id .. '","offsets":' .. placed .. ',"fingerprint":"' ..
      ARGV[a + 5] .. '"}'
    if idem then
      redis.call('SET', idem, record, 'PX', keep)
    end
    out[#out + 1] = 0
    out[#out + 1] = record
    if defer then
      out[#out + 1] = announce
    end
  end
  a = a + 8 + 2 * n
end
return out
""",
)

#: Apply a batch of ledger records and count them in the delivery accounting. Every trail write is
#: "first wins", "highest wins" or a sum, so records may arrive in any order (a Sent from one node
#: before the Published from another). Each (message, device) pair is counted once per counter:
#: the first-wins markers ``e:`` / ``u:`` / ``k:`` / ``x:`` of the trail decide, in the same
#: atomic run, whether a record is the pair's first of its kind (docs/monitoring.md). The marker
#: of a pair's first Sent or Expected (``e:<device>``) and of its first Acked (``k:<device>``)
#: also hold that session's details, so the common delivery — one session, written once, acked
#: once — is two writes in all; the per-session fields are written only for the others. Counts
#: are summed per bucket and node in the script and written with one HINCRBY per field at the
#: end; a bucket's new message ids are added with one SADD per node, whose reply counts them.
#: Which record moves which counter is stated once, in :class:`pushsvc.core.accounting.Tallies`
#: (the memory ledger's accounting): this script must agree with it, and the contract suite runs
#: the table of tests/test_accounting.py through both.
#:
#: KEYS: 2 per bucket touched (its tally hash, its message set), then one trail per record.
#: ARGV[1] the TTL (s) of a trail whose Published record has not arrived yet, ARGV[2] the TTL (s)
#: of a bucket, ARGV[3] the number of buckets; then nine values per record: its kind, seven
#: values by kind, and its bucket's number (0: not accounted):
#:   p: Published JSON, expire at (unix ms)
#:   A: message id, node                               (accepted: counts ``published``)
#:   s: session, [device, node] JSON, sent_at, attempt, device, node, [session, node, sent_at] JSON
#:   e: session, [device, node] JSON, device, node, [session, node, null] JSON  (owed, not written)
#:   a: session, [device, node] JSON, acked_at, device, node, [session, node, acked_at] JSON
#:   x: device, node                                   (expired)
#:   c: node, count
#: Returns the number of records.
LEDGER = Script(
    "ledger",
    """
-- which record moves which counter: pushsvc.core.accounting.Tallies, the reference
local early, bucket_ttl = ARGV[1], ARGV[2]
local first = 2 * tonumber(ARGV[3])
local counts = {}
local accepted = {}
local function count(b, counter, node, n)
  if b == 0 then return end
  local fields = counts[b]
  if fields == nil then
    fields = {}
    counts[b] = fields
  end
  local field = counter .. ':' .. node
  fields[field] = (fields[field] or 0) + (n or 1)
end
local timed = {}
local a = 4
for i = first + 1, #KEYS do
  local key = KEYS[i]
  local kind = ARGV[a]
  local b = tonumber(ARGV[a + 8])
  if kind == 'p' then
    redis.call('HSETNX', key, 'p', ARGV[a + 1])
    redis.call('PEXPIREAT', key, ARGV[a + 2])
    timed[key] = true
  elseif kind == 'A' then
    if b > 0 then
      local by = accepted[b]
      if by == nil then
        by = {}
        accepted[b] = by
      end
      local ids = by[ARGV[a + 2]]
      if ids == nil then
        ids = {}
        by[ARGV[a + 2]] = ids
      end
      ids[#ids + 1] = ARGV[a + 1]
    end
  else
    if kind == 's' then
      local session, device, node = ARGV[a + 1], ARGV[a + 5], ARGV[a + 6]
      if tonumber(ARGV[a + 4]) <= 1 then
        if b > 0 and redis.call('HSETNX', key, 'e:' .. device, ARGV[a + 7]) == 1 then
          count(b, 'expected', node)
          count(b, 'sent', node)
        else
          redis.call('HSETNX', key, 'd:' .. session, ARGV[a + 2])
          redis.call('HSETNX', key, 's:' .. session, ARGV[a + 3])
          redis.call('HSETNX', key, 'n:' .. session, 1)
          if b > 0 and redis.call('HDEL', key, 'u:' .. device) == 1 then
            count(b, 'sent', node)
          end
        end
      else
        local field = 'n:' .. session
        if tonumber(ARGV[a + 4]) > (tonumber(redis.call('HGET', key, field)) or 0) then
          redis.call('HSET', key, field, ARGV[a + 4])
        end
        count(b, 'redelivered', node)
      end
    elseif kind == 'e' then
      local device, node = ARGV[a + 3], ARGV[a + 4]
      if b > 0 and redis.call('HSETNX', key, 'e:' .. device, ARGV[a + 5]) == 1 then
        redis.call('HSET', key, 'u:' .. device, '1')
        count(b, 'expected', node)
      else
        redis.call('HSETNX', key, 'd:' .. ARGV[a + 1], ARGV[a + 2])
      end
    elseif kind == 'a' then
      local session = ARGV[a + 1]
      if redis.call('HSETNX', key, 'k:' .. ARGV[a + 4], ARGV[a + 6]) == 1 then
        count(b, 'acked', ARGV[a + 5])
      else
        redis.call('HSETNX', key, 'd:' .. session, ARGV[a + 2])
        redis.call('HSETNX', key, 'a:' .. session, ARGV[a + 3])
      end
    elseif kind == 'x' then
      if b > 0 and redis.call('HSETNX', key, 'x:' .. ARGV[a + 1], ARGV[a + 2]) == 1 then
        count(b, 'expired', ARGV[a + 2])
      end
    elseif kind == 'c' then
      redis.call('HINCRBY', key, 'c:' .. ARGV[a + 1], ARGV[a + 2])
    end
    if not timed[key] then
      timed[key] = true
      if redis.call('PTTL', key) < 0 then
        redis.call('EXPIRE', key, early)
      end
    end
  end
  a = a + 9
end
for b, by in pairs(accepted) do
  for node, ids in pairs(by) do
    count(b, 'published', node, redis.call('SADD', KEYS[2 * b], unpack(ids)))
  end
end
for b, fields in pairs(counts) do
  local tally = KEYS[2 * b - 1]
  for field, n in pairs(fields) do
    if n > 0 then
      redis.call('HINCRBY', tally, field, n)
    end
  end
  redis.call('EXPIRE', tally, bucket_ttl)
  redis.call('EXPIRE', KEYS[2 * b], bucket_ttl)
end
return #KEYS - first
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

#: Take or extend a lease. KEYS[1] the lease; ARGV[1] the holder, ARGV[2] the TTL (ms).
#: Returns 1 when ``holder`` has the lease now, else 0.
LEASE = Script(
    "lease",
    """
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
""",
)

#: Give a lease up. KEYS[1] the lease; ARGV[1] the holder. Returns 1 when it was held by them.
RELEASE = Script(
    "release",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
""",
)

#: Take a token from an API key's bucket, on Redis's clock so every node counts alike.
#: KEYS[1] the bucket; ARGV[1] rate (per second), ARGV[2] burst. A missing bucket is full.
#: Returns, as a string, 0 when taken, else the seconds until a token will be there.
RATE = Script(
    "rate",
    """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local held = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(held[1]), tonumber(held[2])
if tokens == nil or ts == nil then
  tokens, ts = burst, now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
local fmt = '%.6f'
redis.call('HSET', KEYS[1], 'tokens', string.format(fmt, tokens), 'ts', string.format(fmt, now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return string.format('%.6f', wait)
""",
)

#: Claim due timers (escalations or webhook deliveries). KEYS[1] the sorted set; KEYS[2..]
#: the hash of each candidate member. ARGV[1] now (ms), ARGV[2] hidden until (ms), ARGV[3..]
#: the candidate members, in the order of their hashes. A member still due is moved to
#: ARGV[2] and its hash returned; a member whose hash is gone is removed.
#: Returns, per claimed member: the member and its hash as a flat list.
CLAIM = Script(
    "claim",
    """
local out = {}
for i = 3, #ARGV do
  local member = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], member)
  if score and tonumber(score) <= tonumber(ARGV[1]) then
    local fields = redis.call('HGETALL', KEYS[i - 1])
    if #fields == 0 then
      redis.call('ZREM', KEYS[1], member)
    else
      redis.call('ZADD', KEYS[1], ARGV[2], member)
      out[#out + 1] = member
      out[#out + 1] = fields
    end
  end
end
return out
""",
)

#: Record the first ack of a user for escalations. KEYS[1] the escalation set; KEYS[2..] the
#: escalation hashes. ARGV[1] now (ms); then per hash: its member and [device, at] as JSON.
#: An escalation that exists and has no ack yet gets ``k`` and becomes due now.
SETTLE = Script(
    "settle",
    """
for i = 2, #KEYS do
  local member, acked = ARGV[2 * i - 2], ARGV[2 * i - 1]
  if redis.call('EXISTS', KEYS[i]) == 1 and redis.call('HSETNX', KEYS[i], 'k', acked) == 1 then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], member)
  end
end
return 0
""",
)

#: Start escalation timers. KEYS[1] the escalation set; KEYS[2..] their hashes. ARGV per hash:
#: member, record JSON, step, due (ms), expire at (ms). An existing hash is left alone.
SCHEDULE = Script(
    "schedule",
    """
for i = 2, #KEYS do
  local a = 5 * (i - 2)
  if redis.call('HSETNX', KEYS[i], 'r', ARGV[a + 2]) == 1 then
    redis.call('HSET', KEYS[i], 'f', ARGV[a + 3])
    redis.call('PEXPIREAT', KEYS[i], ARGV[a + 5])
    redis.call('ZADD', KEYS[1], ARGV[a + 4], ARGV[a + 1])
  end
end
return 0
""",
)

#: Take a webhook event id and owe its body to each url. KEYS[1] the webhook set, KEYS[2] the
#: event's hash. ARGV[1] body, ARGV[2] created (s), ARGV[3] keep (s), ARGV[4] due (ms),
#: ARGV[5..] the members (``<event id> <url>``). Returns 0 when the id was taken already.
ENQUEUE = Script(
    "enqueue",
    """
if redis.call('HSETNX', KEYS[2], 'b', ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[2], 'c', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
for i = 5, #ARGV do
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[i])
end
return 1
""",
)

#: Forget a device's subscription if its endpoint is ARGV[2] (or ARGV[2] is ""). KEYS[1] the
#: user's subscriptions; ARGV[1] the device.
UNSUBSCRIBE = Script(
    "unsubscribe",
    """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and (ARGV[2] == '' or cjson.decode(held)['endpoint'] == ARGV[2]) then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
""",
)

#: A device ended a session: renew its subscription's ``seen``. KEYS[1] the user's
#: subscriptions; ARGV[1] the device, ARGV[2] the time (s, as JSON), ARGV[3] retention (s).
SEEN = Script(
    "seen",
    """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held then
  local sub = cjson.decode(held)
  sub['seen'] = tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(sub))
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 0
""",
)
