-- register_resources: claim many resource ids for one instance in one atomic step.
-- Free ids and ids the instance already owns are granted; ids owned by others are conflicts unless
-- force is set, in which case they are taken over (the previous owner's sets are updated so its
-- next heartbeat reports them lost). The per-instance limit is checked before anything is written:
-- a call that would exceed it writes nothing.
-- Owner keys get the instance's remaining lease (PTTL of its hash): they never outlive it.
-- New grants get fencing tokens above every token issued before in the service (Redis TIME in
-- microseconds, or last + 1), so each resource's tokens strictly increase across owners.
--
-- KEYS[1] instance hash     rr:{S}:instance:I
-- KEYS[2] owned set         rr:{S}:owned:I
-- KEYS[3] fence             rr:{S}:fence
-- KEYS[4] audit stream      rr:{S}:audit
-- KEYS[4+i]     owner key of resource i   rr:{S}:owner:R     (i = 1..n)
-- ARGV[1..5] see _prelude.lua
-- ARGV[6] force ('1'/'0')   ARGV[7] limit   ARGV[8] metadata (JSON text)
-- ARGV[9] owned-set key prefix   ARGV[10] lost-set key prefix
-- ARGV[11] owner key prefix      ARGV[12] grant key prefix
-- The resource id is the owner key without its prefix; its grant key is grant prefix .. id.
-- Returns {1} instance not alive; {2, current, requested, limit}; or
--         {0, per_id, previous_owners_flat, owned_count} where per_id[i] is the fencing token
--         (integer) of a granted id or the owner (string) of a conflicting one.
-- Touches: the keys above, the grant keys of the ids, the caller's lost set and, with force, the
-- owned and lost sets of previous owners (all built from prefixes; same hash tag).

local iid = ARGV[2]
local pttl = redis.call('PTTL', KEYS[1])
if pttl <= 0 then
  return {1}
end
local force = ARGV[6] == '1'
local limit = tonumber(ARGV[7])
local n = #KEYS - 4
local id_from = #ARGV[11] + 1
local ids, grant_keys = {}, {}
for i = 1, n do
  local rid = string.sub(KEYS[4 + i], id_from)
  ids[i] = rid
  grant_keys[i] = ARGV[12] .. rid
end

local per_id, grant_idx, mine_idx, prev = {}, {}, {}, {}
local owners = rr_mget(KEYS, 5, 4 + n)
for i = 1, n do
  local cur = owners[i]
  if not cur then
    grant_idx[#grant_idx + 1] = i
  elseif cur == iid then
    mine_idx[#mine_idx + 1] = i
  elseif force then
    grant_idx[#grant_idx + 1] = i
    prev[i] = cur
  else
    per_id[i] = cur
  end
end

local current = redis.call('SCARD', KEYS[2])
if current + #grant_idx > limit then
  return {2, current, #grant_idx, limit}
end

local next_token = nil
local function take_token()
  if not next_token then
    local last = tonumber(redis.call('GET', KEYS[3]) or '0')
    next_token = rr_now_us()
    if next_token <= last then next_token = last + 1 end
  end
  local t = next_token
  next_token = next_token + 1
  return t
end

local now_ms = rr_fmt(math.floor(rr_now_us() / 1000))
local grant_tail = '|' .. now_ms .. '|' .. ARGV[8]
local added, grant_kv, prev_flat, prev_map, have_prev = {}, {}, {}, {}, false

local function grant(i)
  local token = take_token()
  redis.call('SET', KEYS[4 + i], iid, 'PX', pttl)
  grant_kv[#grant_kv + 1] = grant_keys[i]
  grant_kv[#grant_kv + 1] = iid .. '|' .. rr_fmt(token) .. grant_tail
  per_id[i] = token
  added[#added + 1] = ids[i]
end

for _, i in ipairs(grant_idx) do
  local p = prev[i]
  if p then
    local rid = ids[i]
    redis.call('SREM', ARGV[9] .. p, rid)
    redis.call('SADD', ARGV[10] .. p, rid)
    prev_flat[#prev_flat + 1] = rid
    prev_flat[#prev_flat + 1] = p
    prev_map[rid] = p
    have_prev = true
  end
  grant(i)
end

local mine_grant_keys = {}
for j, i in ipairs(mine_idx) do mine_grant_keys[j] = grant_keys[i] end
local mine_grants = rr_mget(mine_grant_keys, 1, #mine_grant_keys)
for j, i in ipairs(mine_idx) do
  redis.call('PEXPIRE', KEYS[4 + i], pttl)
  local g = mine_grants[j]
  local token = g and tonumber(string.match(g, '^[^|]*|(%d+)|'))
  if token then
    per_id[i] = token
  else
    grant(i)  -- a grant record went missing: issue a fresh one
  end
end

if next_token then
  redis.call('SET', KEYS[3], rr_fmt(next_token - 1))
  rr_chunked('MSET', grant_kv)
end
if #added > 0 then
  rr_set_op('SADD', KEYS[2], added)
  -- Ids the caller takes back after losing them are no longer lost.
  local own_lost = ARGV[10] .. iid
  if redis.call('EXISTS', own_lost) == 1 then
    rr_set_op('SREM', own_lost, added)
  end
  local event = {type = 'ResourceRegistered', reason = 'registered', resource_ids = added}
  if have_prev then
    event.reason = 'forced'
    event.previous_owners = prev_map
  end
  rr_emit(KEYS[4], event)
end
return {0, per_id, prev_flat, redis.call('SCARD', KEYS[2])}
