-- read_owners: the valid owner of many resources of one partition (and, if asked, their grant
-- records), in one step. The one read of owners that every batch lookup uses.
--
-- KEYS[1] .. KEYS[n] the owner keys of the resources   rr:{T}:owner:R   (KEYS[i]: resource i)
-- ARGV[1] lease key prefix   ARGV[2] owned-hash key prefix   ARGV[3] '1' to return grant records
-- ARGV[4] owner key prefix
-- Returns {0, owners} where owners[i] is the owner of resource i (false: none); with grant records
-- {0, owners, records} where records[i] is token|registered_ms|metadata_json (false: none).
-- Touches: KEYS, and the lease keys and owned hashes of the owners (same hash tag).

local owners = rr_mget(KEYS, 1, #KEYS)
local alive = {}
for i = 1, #KEYS do
  local cur = owners[i]
  if cur and not rr_alive(ARGV[1], cur, alive) then
    owners[i] = false
  end
end
if ARGV[3] ~= '1' then
  return {RR_OK, owners}
end
local records = {}
local id_from = #ARGV[4] + 1
for i = 1, #KEYS do
  local cur = owners[i]
  records[i] = cur and redis.call('HGET', ARGV[2] .. cur, string.sub(KEYS[i], id_from)) or false
end
return {RR_OK, owners, records}
