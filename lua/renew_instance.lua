-- renew_instance (heartbeat, the service's part): renew an instance's record and index entry.
-- Its leases in the partitions are renewed by renew_lease, in the same round trip.
--
-- KEYS[1] instance hash   rr:{S}:instance:I
-- KEYS[2] instance index  rr:{S}:instances
-- KEYS[3] quota hash      rr:{S}:quota:I   (only with partitions > 1)
-- ARGV[1] instance id   ARGV[2] ttl_ms
-- Returns {1} when the instance is not alive, else {0, quota_version} (the version a reconciliation
-- of the owned count must find unchanged; 0 without a quota hash).
-- Touches: the keys above.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {RR_INSTANCE_NOT_ALIVE}
end
local ttl = tonumber(ARGV[2])
local now = rr_now_ms()
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('HSET', KEYS[1], 'heartbeat_at_ms', rr_fmt(now), 'ttl_ms', rr_fmt(ttl))
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
local version = 0
if KEYS[3] then
  version = tonumber(redis.call('HGET', KEYS[3], 'ver') or '0')
end
return {RR_OK, version}
