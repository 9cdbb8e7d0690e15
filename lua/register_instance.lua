-- register_instance: create or refresh an instance's record on the service's slot. Its leases in
-- the partitions are opened next, by open_lease (which cleans up after a previous incarnation).
--
-- KEYS[1] instance hash      rr:{S}:instance:I
-- KEYS[2] instance index     rr:{S}:instances    (zset: id -> lease expiry ms)
-- KEYS[3] audit stream       rr:{S}:audit
-- ARGV[1..6] see _prelude.lua
-- ARGV[7] ttl_ms   ARGV[8] metadata (JSON text)
-- Returns {0, registered_at_ms, now_ms, existed (0/1)}
-- Touches: the keys above.

local iid = ARGV[2]
local ttl = tonumber(ARGV[7])
local now = rr_now_ms()
local existed = redis.call('EXISTS', KEYS[1])
local registered_at = now
if existed == 1 then
  registered_at = tonumber(redis.call('HGET', KEYS[1], 'registered_at_ms')) or now
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
  rr_emit(KEYS[3], {type = 'InstanceRegistered', reason = 'registered'})
end
return {RR_OK, registered_at, now, existed}
