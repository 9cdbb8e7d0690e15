-- sweep_instance: clean up after an instance whose lease ran out. Safe to run in many processes at
-- once: the first run does the work and appends one audit record; later runs find nothing to do.
-- Owner keys never outlive the instance's lease, so every id it owned is already free; this
-- removes its index entry, owned hash (with the grant records) and lost set, and records
-- the cleanup.
--
-- KEYS[1] instance hash   KEYS[2] instance index   KEYS[3] owned hash   KEYS[4] lost set
-- KEYS[5] audit stream
-- ARGV[1..6] see _prelude.lua
-- ARGV[7] owner key prefix
-- Returns {0, 0} when alive or already clean, else {0, 1, released_ids}
-- Touches: the keys above and the owner keys of the owned ids (same hash tag).

if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, 0}
end
if redis.call('EXISTS', KEYS[3], KEYS[4]) == 0 and not redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  return {0, 0}
end
local released = rr_release_all(KEYS[3], KEYS[4], KEYS[2], ARGV[7])
rr_emit(KEYS[5], {type = 'ResourceReleased', reason = 'instance_offline', resource_ids = released})
return {0, 1, released}
