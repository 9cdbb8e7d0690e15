-- Shared helpers. scripts.py prepends this file to every script before loading it, so each
-- operation stays one file while these few functions exist once.
--
-- Conventions of every script:
--   ARGV[1] service name      ARGV[2] instance id     ARGV[3] events channel
--   ARGV[4] audit MAXLEN ~    ARGV[5] trace id ('' when none)
--   ARGV[6] the publish command for the events channel: PUBLISH, or SPUBLISH on Redis Cluster
--           (sharded pub/sub: the message stays on the shard of the script's slot)
--   script-specific ARGV start at 7. The first reply element is a status code:
--   0 ok, 1 instance not alive, 2 per-instance limit exceeded, 3 release of ids owned by others.

local RR_CHUNK = 1000  -- unpack() stays far below Lua's C-stack limit

local function rr_now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function rr_fmt(n)
  return string.format('%d', n)
end

-- SADD / SREM / HDEL a Lua list of members (fields) in chunks.
local function rr_set_op(op, key, members)
  for i = 1, #members, RR_CHUNK do
    redis.call(op, key, unpack(members, i, math.min(i + RR_CHUNK - 1, #members)))
  end
end

-- MGET keys[first..last] in chunks; the result is aligned with those positions (false = no key).
local function rr_mget(keys, first, last)
  local out = {}
  for i = first, last, RR_CHUNK do
    local vals = redis.call('MGET', unpack(keys, i, math.min(i + RR_CHUNK - 1, last)))
    for j = 1, #vals do out[#out + 1] = vals[j] end
  end
  return out
end

-- Run a variadic command over a flat list in chunks: DEL keys..., MSET k v k v ...
-- (RR_CHUNK is even, so MSET pairs are never split).
local function rr_chunked(cmd, list)
  for i = 1, #list, RR_CHUNK do
    redis.call(cmd, unpack(list, i, math.min(i + RR_CHUNK - 1, #list)))
  end
end

-- Append an ownership event to the audit stream and publish it on the events channel.
-- ts_ms is Redis time. Empty lists encode as {} (cjson); readers treat that as an empty list.
local function rr_emit(stream, event)
  event.service_name = ARGV[1]
  event.instance_id = event.instance_id or ARGV[2]
  if ARGV[5] ~= '' then event.trace_id = ARGV[5] end
  event.ts_ms = math.floor(rr_now_us() / 1000)
  local payload = cjson.encode(event)
  redis.call('XADD', stream, 'MAXLEN', '~', ARGV[4], '*', 'event', payload)
  redis.call(ARGV[6], ARGV[3], payload)
end

-- Release everything instance ARGV[2] still holds: the owner keys it owns, its owned hash (with the
-- grant records), its lost set and its entry in the instance index.
-- Owner keys are built from the prefix given; they carry the service's hash tag (same slot).
-- Returns the released ids (owner key still the instance's, or already expired).
local function rr_release_all(owned_key, lost_key, index_key, owner_prefix)
  local iid = ARGV[2]
  local members = redis.call('HKEYS', owned_key)
  local okeys = {}
  for i = 1, #members do okeys[i] = owner_prefix .. members[i] end
  local owners = rr_mget(okeys, 1, #okeys)
  local released, dels = {}, {}
  for i = 1, #members do
    local cur = owners[i]
    if cur == iid then
      dels[#dels + 1] = okeys[i]
    end
    if cur == iid or not cur then
      released[#released + 1] = members[i]
    end
  end
  rr_chunked('DEL', dels)
  redis.call('DEL', owned_key, lost_key)
  local was_indexed = redis.call('ZREM', index_key, iid)
  return released, was_indexed
end
