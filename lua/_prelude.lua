-- Shared helpers. scripts.py prepends this file to every script before loading it, so each
-- operation stays one file while these few functions exist once.
--
-- Scripts that change ownership (and so append to the audit stream and publish an event) take
-- these first arguments:
--   ARGV[1] service name      ARGV[2] instance id     ARGV[3] events channel
--   ARGV[4] audit MAXLEN ~    ARGV[5] trace id ('' when none)
--   ARGV[6] the publish command for the events channel: PUBLISH, or SPUBLISH on Redis Cluster
--           (sharded pub/sub: the message stays on the shard of the script's slot)
--   and their own arguments from ARGV[7]. Read-only scripts and the quota scripts take only their
--   own. The first reply element is a status code, with the names of status.py's ScriptStatus:

local RR_OK = 0                  -- done
local RR_INSTANCE_NOT_ALIVE = 1  -- the instance's lease is gone
local RR_LIMIT_EXCEEDED = 2      -- the per-instance limit would be exceeded: nothing was registered
local RR_NOT_OWNER = 3           -- a release names ids other live instances own: nothing was released
local RR_OVER_BUDGET = 4         -- more new grants than the caller reserved (a race: roll back, try again)
local RR_STALE_OWNER = 5         -- a state write whose fencing token is not the current grant: nothing written
local RR_VERSION_CONFLICT = 6    -- a state compare-and-set found another version: nothing written

local RR_CHUNK = 1000  -- unpack() stays far below Lua's C-stack limit

local function rr_now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function rr_now_ms()
  return math.floor(rr_now_us() / 1000)
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

-- Is the lease of `owner` in this partition alive? (An owner key is valid only while it is.)
-- `seen` caches answers within one script run.
local function rr_alive(lease_prefix, owner, seen)
  local known = seen[owner]
  if known == nil then
    known = redis.call('EXISTS', lease_prefix .. owner) == 1
    seen[owner] = known
  end
  return known
end

-- Append an ownership event to the audit stream and publish it on the events channel (the opt-in
-- service-wide feed). A grant is also sent as a notice to the instances it concerns, on their own
-- notice channels (the events channel, ':' and the instance id: same hash tag, same slot): the new
-- owner (an adoption) and every previous owner (a takeover). Instances listen to their notices
-- only, so a change costs the same whether 0 or 1,000 instances are running.
-- ts_ms is Redis time. Empty lists encode as {} (cjson); readers treat that as an empty list.
local function rr_emit(stream, event)
  event.service_name = ARGV[1]
  event.instance_id = event.instance_id or ARGV[2]
  if ARGV[5] ~= '' then event.trace_id = ARGV[5] end
  event.ts_ms = rr_now_ms()
  local payload = cjson.encode(event)
  redis.call('XADD', stream, 'MAXLEN', '~', ARGV[4], '*', 'event', payload)
  redis.call(ARGV[6], ARGV[3], payload)
  if event.type == 'ResourceRegistered' then
    local told = {[event.instance_id] = true}
    redis.call(ARGV[6], ARGV[3] .. ':' .. event.instance_id, payload)
    for _, previous in pairs(event.previous_owners or {}) do
      if not told[previous] then
        told[previous] = true
        redis.call(ARGV[6], ARGV[3] .. ':' .. previous, payload)
      end
    end
  end
end

-- Release everything instance ARGV[2] still holds in this partition: the owner keys that still
-- name it, its owned hash (with the grant records) and its lost set. Owner keys are built from the
-- prefix given; they carry the partition's hash tag (same slot).
-- Returns the released ids (owner key still the instance's, or already gone).
local function rr_release_all(owned_key, lost_key, owner_prefix)
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
  return released
end
