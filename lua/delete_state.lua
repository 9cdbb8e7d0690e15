-- delete_state: remove a resource's state, under the same fence as save_state (the writer holds the
-- current grant; no state was written under a larger token) and, with an expected version, the same
-- compare-and-set.
--
-- KEYS[1] state key of the resource     rr:{T}:state:R
-- KEYS[2] owner key of the resource     rr:{T}:owner:R
-- ARGV[1] owned-hash key prefix         ARGV[2] lease key prefix     ARGV[3] resource id
-- ARGV[4] writer's instance id          ARGV[5] writer's fencing token
-- ARGV[6] expected version ('' for none)
-- Returns {0, 1} when a state was deleted, {0, 0} when there was none; {5, current_token} and
-- {6, stored_version} as save_state.
-- Touches: KEYS[1]; reads KEYS[2], the owner's lease key and owned hash (same hash tag).

local token = tonumber(ARGV[5])
local owner = redis.call('GET', KEYS[2])
local current = -1
if owner and redis.call('EXISTS', ARGV[2] .. owner) == 1 then
  local record = redis.call('HGET', ARGV[1] .. owner, ARGV[3])
  if record then current = tonumber(string.match(record, '^(%d+)')) or -1 end
end
if owner ~= ARGV[4] or current ~= token then
  return {RR_STALE_OWNER, current}
end
local stored = redis.call('HMGET', KEYS[1], 'ver', 'tok')
local version = tonumber(stored[1] or '0')
local written = tonumber(stored[2] or '0')
if token < written then
  return {RR_STALE_OWNER, written}
end
if ARGV[6] ~= '' and tonumber(ARGV[6]) ~= version then
  return {RR_VERSION_CONFLICT, version}
end
return {RR_OK, redis.call('DEL', KEYS[1])}
