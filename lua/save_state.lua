-- save_state: write a resource's state if, and only if, the writer holds the resource's current
-- grant: the owner key names the writer, the writer's lease in the partition is alive, its grant
-- record carries the writer's fencing token, and no state was written under a larger token. With an
-- expected version, the stored version must equal it too (compare-and-set; 0: no state yet).
--
-- KEYS[1] state key of the resource     rr:{T}:state:R   (hash: v = value, ver = version, tok = token)
-- KEYS[2] owner key of the resource     rr:{T}:owner:R
-- ARGV[1] owned-hash key prefix         ARGV[2] lease key prefix     ARGV[3] resource id
-- ARGV[4] writer's instance id          ARGV[5] writer's fencing token
-- ARGV[6] expected version ('' for none)  ARGV[7] the encoded value (bytes)
-- Returns {0, version} (the new version); {5, current_token} when the writer is not the current
-- owner (current_token: the live grant's token, -1 when nobody holds a live grant, or the token the
-- state was last written under); {6, stored_version} when the compare-and-set fails.
-- Touches: KEYS[1]; reads KEYS[2], the owner's lease key and owned hash (built from prefixes; same
-- hash tag).

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
version = version + 1
redis.call('HSET', KEYS[1], 'v', ARGV[7], 'ver', rr_fmt(version), 'tok', ARGV[5])
return {RR_OK, version}
