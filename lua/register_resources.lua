-- register_resources: claim many resource ids of one partition for one instance, in one step.
-- Free ids, ids whose owner's lease ran out, and ids the instance already owns are granted; ids
-- owned by another live instance are conflicts unless force is set, in which case they are taken
-- over (the previous owner's owned hash and lost set are updated so its next heartbeat reports
-- them lost). Owner keys carry no TTL: they are valid while the owner's lease key lives.
-- The limit: with one partition the per-instance limit is checked here, before anything is
-- written (a call that would exceed it writes nothing). With several, the caller reserved room
-- for `budget` new grants in the instance's quota first; needing more (a race since the caller
-- looked) writes nothing and answers 4.
-- New grants get fencing tokens above every token issued before in the partition (Redis TIME in
-- microseconds, or last + 1): a resource never leaves its partition, so its tokens strictly
-- increase across owners. The grant record of each id (token|registered_ms|metadata_json) is a
-- field of the owner's owned hash, keyed by the resource id.
--
-- KEYS[1] lease key         rr:{T}:lease:I
-- KEYS[2] owned hash        rr:{T}:owned:I
-- KEYS[3] fence             rr:{T}:fence
-- KEYS[4] audit stream      rr:{T}:audit
-- KEYS[4+i]     owner key of resource i   rr:{T}:owner:R     (i = 1..n)
-- ARGV[1..6] see _prelude.lua
-- ARGV[7] force ('1'/'0')   ARGV[8] limit   ARGV[9] budget ('' with one partition)
-- ARGV[10] metadata (JSON text)   ARGV[11] owned-hash key prefix   ARGV[12] lost-set key prefix
-- ARGV[13] owner key prefix   ARGV[14] lease key prefix
-- The resource id is the owner key without its prefix.
-- Returns {1} instance not alive; {2, current, requested, limit}; {4, requested, budget}; or
--         {0, per_id, previous_owners_flat, owned_count, new_grants} where per_id[i] is the fencing
--         token (integer) of a granted id or the owner (string) of a conflicting one.
-- Touches: the keys above, the lease keys of current owners, the caller's lost set and, when an id
-- changes hands, the owned hash (and with force, the lost set) of its previous owner (built from
-- prefixes; same hash tag).

local iid = ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {RR_INSTANCE_NOT_ALIVE}
end
local force = ARGV[7] == '1'
local n = #KEYS - 4
local id_from = #ARGV[13] + 1
local ids = {}
for i = 1, n do ids[i] = string.sub(KEYS[4 + i], id_from) end

local per_id, grant_idx, mine_idx, prev, stale = {}, {}, {}, {}, {}
local alive = {}
local owners = rr_mget(KEYS, 5, 4 + n)
for i = 1, n do
  local cur = owners[i]
  if not cur then
    grant_idx[#grant_idx + 1] = i
  elseif cur == iid then
    mine_idx[#mine_idx + 1] = i
  elseif not rr_alive(ARGV[14], cur, alive) then
    grant_idx[#grant_idx + 1] = i  -- its owner's lease ran out: free
    stale[i] = cur
  elseif force then
    grant_idx[#grant_idx + 1] = i
    prev[i] = cur
  else
    per_id[i] = cur
  end
end

-- Tokens of ids already owned (kept on re-registration), read in chunks.
local mine_tokens, missing = {}, 0
for c = 1, #mine_idx, RR_CHUNK do
  local fields = {}
  for j = c, math.min(c + RR_CHUNK - 1, #mine_idx) do fields[#fields + 1] = ids[mine_idx[j]] end
  local records = redis.call('HMGET', KEYS[2], unpack(fields))
  for j = 1, #records do
    local token = records[j] and tonumber(string.match(records[j], '^(%d+)|'))
    mine_tokens[c + j - 1] = token
    if not token then missing = missing + 1 end
  end
end

local new_grants = #grant_idx + missing
if ARGV[9] == '' then
  local limit = tonumber(ARGV[8])
  local current = redis.call('HLEN', KEYS[2])
  if current + new_grants > limit then
    return {RR_LIMIT_EXCEEDED, current, new_grants, limit}
  end
elseif new_grants > tonumber(ARGV[9]) then
  return {RR_OVER_BUDGET, new_grants, tonumber(ARGV[9])}
end

local next_token, grant_tail = nil, nil
local added, grant_kv, prev_flat, prev_map, have_prev = {}, {}, {}, {}, false

local function grant(i)
  if not next_token then
    local now_us = rr_now_us()
    local last = tonumber(redis.call('GET', KEYS[3]) or '0')
    next_token = now_us > last and now_us or last + 1
    grant_tail = '|' .. rr_fmt(math.floor(now_us / 1000)) .. '|' .. ARGV[10]
  end
  local token = next_token
  next_token = next_token + 1
  redis.call('SET', KEYS[4 + i], iid)
  grant_kv[#grant_kv + 1] = ids[i]
  grant_kv[#grant_kv + 1] = rr_fmt(token) .. grant_tail
  per_id[i] = token
  added[#added + 1] = ids[i]
end

for _, i in ipairs(grant_idx) do
  local rid = ids[i]
  local p = prev[i]
  if p then
    redis.call('HDEL', ARGV[11] .. p, rid)
    redis.call('SADD', ARGV[12] .. p, rid)
    prev_flat[#prev_flat + 1] = rid
    prev_flat[#prev_flat + 1] = p
    prev_map[rid] = p
    have_prev = true
  elseif stale[i] then
    redis.call('HDEL', ARGV[11] .. stale[i], rid)  -- tidy the dead owner's record (the sweeper would)
  end
  grant(i)
end

for j, i in ipairs(mine_idx) do
  if mine_tokens[j] then
    per_id[i] = mine_tokens[j]
  else
    grant(i)  -- a grant record went missing: issue a fresh one
  end
end

if next_token then
  redis.call('SET', KEYS[3], rr_fmt(next_token - 1))
  for c = 1, #grant_kv, RR_CHUNK do
    redis.call('HSET', KEYS[2], unpack(grant_kv, c, math.min(c + RR_CHUNK - 1, #grant_kv)))
  end
  -- Ids the caller takes back after losing them are no longer lost.
  local own_lost = ARGV[12] .. iid
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
return {RR_OK, per_id, prev_flat, redis.call('HLEN', KEYS[2]), new_grants}
