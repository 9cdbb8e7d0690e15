-- check_partitions: the partition count a service was set up with, recorded on first use.
--
-- KEYS[1] rr:{S}:partitions
-- ARGV[1] the caller's count   ARGV[2] '1' to record it when nothing is recorded yet
-- Returns {0, recorded} where recorded is the count in Redis (false: none recorded).
-- Touches: KEYS[1].

local recorded = redis.call('GET', KEYS[1])
if not recorded and ARGV[2] == '1' then
  redis.call('SET', KEYS[1], ARGV[1])
  recorded = ARGV[1]
end
return {RR_OK, recorded}
