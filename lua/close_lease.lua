-- close_lease: release everything an instance holds in one partition and drop its lease there:
-- its graceful exit ('deregister'), or the cleanup after it died ('sweep': only when its lease ran
-- out). Safe to run in many processes at once: the first sweep does the work and appends one audit
-- record; later runs find nothing to do.
--
-- KEYS[1] lease key     rr:{T}:lease:I
-- KEYS[2] owned hash    rr:{T}:owned:I
-- KEYS[3] lost set      rr:{T}:lost:I
-- KEYS[4] audit stream  rr:{T}:audit
-- ARGV[1..6] see _prelude.lua
-- ARGV[7] mode ('deregister' | 'sweep')   ARGV[8] owner key prefix
-- ARGV[9] '1' to record the event even when nothing was released
-- Returns {0, 0} when there was nothing to do (sweep: already clean), {0, 2} when the lease still
-- lives here (sweep: come back later), else {0, 1, released_ids}.
-- Touches: the keys above and the owner keys of the owned ids (same hash tag).

local sweep = ARGV[7] == 'sweep'
if sweep then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return {RR_OK, 2}
  end
  if redis.call('EXISTS', KEYS[2], KEYS[3]) == 0 then
    return {RR_OK, 0}
  end
end
local released = rr_release_all(KEYS[2], KEYS[3], ARGV[8])
redis.call('DEL', KEYS[1])
if #released > 0 or ARGV[9] == '1' then
  local reason = sweep and 'instance_offline' or 'deregistered'
  rr_emit(KEYS[4], {type = 'ResourceReleased', reason = reason, resource_ids = released})
end
return {RR_OK, 1, released}
