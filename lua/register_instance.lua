-- register_instance: create or refresh an instance's liveness (lease = ttl_ms).
-- A previous incarnation with the same id whose lease ran out is cleaned first (as the sweeper
-- would), so a restarted instance starts with nothing.
--
-- KEYS[1] instance hash      rr:{S}:instance:I
-- KEYS[2] instance index     rr:{S}:instances    (zset: id -> lease expiry ms)
-- KEYS[3] owned hash         rr:{S}:owned:I
-- KEYS[4] lost set           rr:{S}:lost:I
-- KEYS[5] audit stream       rr:{S}:audit
-- ARGV[1..6] see _prelude.lua
-- ARGV[7] ttl_ms   ARGV[8] metadata (JSON text)   ARGV[9] owner key prefix
-- Returns {0, registered_at_ms, now_ms, existed (0/1), swept_ids}
-- Touches: the keys above; the owner keys of a swept previous incarnation.

local iid = ARGV[2]
local ttl = tonumber(ARGV[7])
local now = math.floor(rr_now_us() / 1000)
local existed = redis.call('EXISTS', KEYS[1])
local registered_at = now
local swept = {}
if existed == 1 then
  registered_at = tonumber(redis.call('HGET', KEYS[1], 'registered_at_ms')) or now
elseif redis.call('EXISTS', KEYS[3], KEYS[4]) > 0 or redis.call('ZSCORE', KEYS[2], iid) then
  swept = rr_release_all(KEYS[3], KEYS[4], KEYS[2], ARGV[9])
  rr_emit(KEYS[5], {type = 'ResourceReleased', reason = 'instance_offline', resource_ids = swept})
end
redis.call('HSET', KEYS[1],
  'instance_id', iid,
  'ttl_ms', rr_fmt(ttl),
  'registered_at_ms', rr_fmt(registered_at),
  'heartbeat_at_ms', rr_fmt(now),
  'metadata', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl, iid)
if existed == 0 then
  rr_emit(KEYS[5], {type = 'InstanceRegistered', reason = 'registered'})
end
return {0, registered_at, now, existed, swept}
