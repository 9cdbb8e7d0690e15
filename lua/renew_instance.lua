-- renew_instance (heartbeat): renew an instance's lease and every resource it still owns, in one step.
-- Ids whose owner key is gone (expired) or holds another instance (taken by force) are reported
-- lost and dropped from the owned hash; ids moved to the lost set by a forced takeover are reported
-- and the lost set is drained.
--
-- KEYS[1] instance hash   rr:{S}:instance:I
-- KEYS[2] instance index  rr:{S}:instances
-- KEYS[3] owned hash      rr:{S}:owned:I
-- KEYS[4] lost set        rr:{S}:lost:I
-- KEYS[5] audit stream    rr:{S}:audit
-- ARGV[1..6] see _prelude.lua
-- ARGV[7] ttl_ms   ARGV[8] owner key prefix
-- Returns {1} when the instance is not alive, else {0, owned_count, lost_ids}
-- Touches: the keys above and the owner keys of the owned ids (same hash tag).

local iid = ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {1}
end
local ttl = tonumber(ARGV[7])
local now = math.floor(rr_now_us() / 1000)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('HSET', KEYS[1], 'heartbeat_at_ms', rr_fmt(now), 'ttl_ms', rr_fmt(ttl))
redis.call('ZADD', KEYS[2], now + ttl, iid)

local members = redis.call('HKEYS', KEYS[3])
local okeys = {}
for i = 1, #members do okeys[i] = ARGV[8] .. members[i] end
local owners = rr_mget(okeys, 1, #okeys)
local lost, expired = {}, {}
for i = 1, #members do
  local cur = owners[i]
  if cur == iid then
    redis.call('PEXPIRE', okeys[i], ttl)
  else
    lost[#lost + 1] = members[i]
    if not cur then
      expired[#expired + 1] = members[i]
    end
  end
end
local owned_count = #members - #lost
if #lost > 0 then
  rr_set_op('HDEL', KEYS[3], lost)
end
local forced = redis.call('SMEMBERS', KEYS[4])
if #forced > 0 then
  redis.call('DEL', KEYS[4])
  for i = 1, #forced do lost[#lost + 1] = forced[i] end
end
if #expired > 0 then
  rr_emit(KEYS[5], {type = 'ResourceReleased', reason = 'expired', resource_ids = expired})
end
return {0, owned_count, lost}
