-- renew_lease (heartbeat, one partition): renew the instance's lease key, the one key that keeps
-- every owner key naming it valid, and drain the ids taken from it by force. Its cost does not
-- depend on how many resources the instance owns.
--
-- KEYS[1] lease key     rr:{T}:lease:I
-- KEYS[2] owned hash    rr:{T}:owned:I
-- KEYS[3] lost set      rr:{T}:lost:I
-- ARGV[1] ttl_ms
-- Returns {1} when the lease is gone (it ran out: everything the instance had here is lost), else
-- {0, owned_count, lost_ids}.
-- Touches: the keys above.

if redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1])) == 0 then
  return {RR_INSTANCE_NOT_ALIVE}
end
local lost = redis.call('SMEMBERS', KEYS[3])
if #lost > 0 then
  redis.call('DEL', KEYS[3])
end
return {RR_OK, redis.call('HLEN', KEYS[2]), lost}
