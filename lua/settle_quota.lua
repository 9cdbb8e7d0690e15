-- settle_quota: bring the owned count of an instance's quota up to date (several partitions).
-- 'settle': a registration is done: drop its reservation and add what it granted.
-- 'reconcile': set the owned count to what the partitions hold (their owned hashes, summed by the
-- caller after reading the version), unless a settle happened since (the version changed): then
-- the count is left as it is, higher than or equal to the truth, and the next heartbeat tries again.
--
-- KEYS[1] quota hash   rr:{S}:quota:I
-- ARGV[1] 'settle' | 'reconcile'
-- settle:    ARGV[2] reservation id ('' for none)   ARGV[3] granted count
-- reconcile: ARGV[2] version read before the partitions   ARGV[3] owned count in the partitions
-- Returns {0, applied (0/1)}
-- Touches: KEYS[1].

if ARGV[1] == 'settle' then
  if ARGV[2] ~= '' then
    redis.call('HDEL', KEYS[1], 'r:' .. ARGV[2])
  end
  redis.call('HINCRBY', KEYS[1], 'owned', tonumber(ARGV[3]))
  redis.call('HINCRBY', KEYS[1], 'ver', 1)
  return {RR_OK, 1}
end
if tonumber(redis.call('HGET', KEYS[1], 'ver') or '0') ~= tonumber(ARGV[2]) then
  return {RR_OK, 0}
end
redis.call('HSET', KEYS[1], 'owned', ARGV[3])
return {RR_OK, 1}
