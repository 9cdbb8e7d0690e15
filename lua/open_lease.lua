-- open_lease: take (or renew) an instance's lease in one partition. When the instance had no live
-- lease here, what a previous incarnation left (owner keys that still name it, its owned hash and
-- lost set) is released first, so a restarted instance starts with nothing.
--
-- KEYS[1] lease key     rr:{T}:lease:I
-- KEYS[2] owned hash    rr:{T}:owned:I
-- KEYS[3] lost set      rr:{T}:lost:I
-- KEYS[4] audit stream  rr:{T}:audit
-- ARGV[1..6] see _prelude.lua
-- ARGV[7] ttl_ms   ARGV[8] owner key prefix
-- Returns {0, existed (0/1), swept_ids}
-- Touches: the keys above and the owner keys of a previous incarnation (same hash tag).

local ttl = tonumber(ARGV[7])
if redis.call('PEXPIRE', KEYS[1], ttl) == 1 then
  return {RR_OK, 1, {}}
end
local swept = {}
if redis.call('EXISTS', KEYS[2], KEYS[3]) > 0 then
  swept = rr_release_all(KEYS[2], KEYS[3], ARGV[8])
  if #swept > 0 then
    rr_emit(KEYS[4], {type = 'ResourceReleased', reason = 'instance_offline', resource_ids = swept})
  end
end
redis.call('SET', KEYS[1], rr_fmt(rr_now_ms()), 'PX', ttl)
return {RR_OK, 0, swept}
