-- lookup_resource: a resource's owner and its grant record, in one round trip. An owner key whose
-- owner's lease ran out is no owner.
--
-- KEYS[1] owner key of the resource   rr:{T}:owner:R
-- ARGV[1] owned-hash key prefix       ARGV[2] resource id    ARGV[3] lease key prefix
-- Returns {0} when nobody owns it, else {0, owner, grant_record} where grant_record is
-- token|registered_ms|metadata_json (false if missing).
-- Touches: KEYS[1], the owner's lease key and owned hash (built from prefixes; same hash tag).

local owner = redis.call('GET', KEYS[1])
if not owner or redis.call('EXISTS', ARGV[3] .. owner) == 0 then
  return {RR_OK}
end
return {RR_OK, owner, redis.call('HGET', ARGV[1] .. owner, ARGV[2])}
