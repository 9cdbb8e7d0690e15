-- deregister_instance: graceful exit. Releases everything the instance owns and removes it.
--
-- KEYS[1] instance hash   KEYS[2] instance index   KEYS[3] owned hash   KEYS[4] lost set
-- KEYS[5] audit stream
-- ARGV[1..6] see _prelude.lua
-- ARGV[7] owner key prefix
-- Returns {0, released_ids, was_alive (0/1)}
-- Touches: the keys above and the owner keys of the owned ids (same hash tag).

local released = rr_release_all(KEYS[3], KEYS[4], KEYS[2], ARGV[7])
local was_alive = redis.call('DEL', KEYS[1])
rr_emit(KEYS[5], {type = 'ResourceReleased', reason = 'deregistered', resource_ids = released})
return {0, released, was_alive}
