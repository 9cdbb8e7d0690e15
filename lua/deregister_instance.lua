-- deregister_instance (graceful exit, the service's part): remove the instance's record, index
-- entry and quota. Its partitions were closed first (close_lease).
--
-- KEYS[1] instance hash   KEYS[2] instance index   KEYS[3] quota hash
-- ARGV[1] instance id
-- Returns {0, was_alive (0/1)}
-- Touches: the keys above.

local was_alive = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return {RR_OK, was_alive}
