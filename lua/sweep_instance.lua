-- sweep_instance (the service's part of cleaning up after a dead instance), in two modes:
--   'claim': the one sweeper that cleans this instance now (others skip it): only when its record
--            is gone (its lease ran out) and it is still indexed; the claim lapses after
--            ARGV[3] ms, so a sweeper that dies halfway leaves the work to the next one;
--   'finish': once every partition was swept (close_lease in 'sweep' mode), forget the instance;
--   'abandon': a partition still had a live lease (its expiry trails the record's by moments):
--            drop the claim, the next sweep finishes.
--
-- KEYS[1] instance hash   KEYS[2] instance index   KEYS[3] quota hash   KEYS[4] sweep claim
-- ARGV[1] instance id   ARGV[2] 'claim' | 'finish' | 'abandon'   ARGV[3] claim lifetime (ms)
-- Returns {0, 0} when there is nothing to do (alive, already forgotten, or claimed by another
-- sweeper), else {0, 1}.
-- Touches: the keys above.

if ARGV[2] == 'claim' then
  if redis.call('EXISTS', KEYS[1]) == 1 or not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
    return {RR_OK, 0}
  end
  if not redis.call('SET', KEYS[4], '1', 'NX', 'PX', tonumber(ARGV[3])) then
    return {RR_OK, 0}
  end
  return {RR_OK, 1}
end
if ARGV[2] == 'abandon' or redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[4])
  return {RR_OK, 0}  -- a partition is not done yet, or it came back meanwhile
end
redis.call('DEL', KEYS[3], KEYS[4])
return {RR_OK, redis.call('ZREM', KEYS[2], ARGV[1])}
