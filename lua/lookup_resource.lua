-- lookup_resource: a resource's owner and its grant record, in one round trip.
--
-- KEYS[1] owner key of the resource   rr:{S}:owner:R
-- ARGV[1] owned-hash key prefix       ARGV[2] resource id
-- Returns {0} when nobody owns it, else {0, owner, grant_record} where grant_record is
-- token|registered_ms|metadata_json (false if missing).
-- Touches: KEYS[1] and the owner's owned hash (built from the prefix; same hash tag).

local owner = redis.call('GET', KEYS[1])
if not owner then
  return {0}
end
return {0, owner, redis.call('HGET', ARGV[1] .. owner, ARGV[2])}
