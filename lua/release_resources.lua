-- release_resources: owner-checked release of many ids of one partition, in one of three modes:
--   '0' all-or-nothing: if any id is owned by another live instance, nothing is released;
--   '1' check: nothing is written, it only answers whether '0' would refuse (the first phase of a
--       release across partitions);
--   '2' per id: release what is still the caller's and skip the rest (rollbacks, and the second
--       phase of a release across partitions).
-- Ids without a valid owner are reported as already free (release is idempotent); a stale grant
-- record of theirs in the caller's owned hash is dropped too.
--
-- KEYS[1] owned hash       rr:{T}:owned:I
-- KEYS[2] audit stream     rr:{T}:audit
-- KEYS[2+i]     owner key of resource i   (i = 1..n)
-- ARGV[1..6] see _prelude.lua
-- ARGV[7] reason for the event ('released', 'rolled_back')   ARGV[8] owner key prefix
-- ARGV[9] lease key prefix   ARGV[10] mode ('0', '1' or '2', see above)
-- The resource id is the owner key without its prefix.
-- Returns {3, owners_flat} (rid, owner, ...) when forbidden; {0} in check mode; else
-- {0, flags, owned_count} where flags[i] is 1 for a released id and 0 for an id that was free.
-- Touches: the keys above and the lease keys of current owners.

local iid = ARGV[2]
local n = #KEYS - 2
local id_from = #ARGV[8] + 1
local ids, current, foreign, alive = {}, rr_mget(KEYS, 3, 2 + n), {}, {}
local strict = ARGV[10] ~= '2'
for i = 1, n do
  ids[i] = string.sub(KEYS[2 + i], id_from)
  local cur = current[i]
  if strict and cur and cur ~= iid and rr_alive(ARGV[9], cur, alive) then
    foreign[#foreign + 1] = ids[i]
    foreign[#foreign + 1] = cur
  end
end
if #foreign > 0 then
  return {RR_NOT_OWNER, foreign}
end
if ARGV[10] == '1' then
  return {RR_OK}
end

local flags, released, dels = {}, {}, {}
for i = 1, n do
  if current[i] == iid then
    dels[#dels + 1] = KEYS[2 + i]
    released[#released + 1] = ids[i]
    flags[i] = 1
  else
    flags[i] = 0  -- no owner, or a dead owner's key (left to the sweeper)
  end
end
rr_chunked('DEL', dels)
rr_set_op('HDEL', KEYS[1], ids)  -- ids of others were never in the caller's owned hash (or left it)
if #released > 0 then
  rr_emit(KEYS[2], {type = 'ResourceReleased', reason = ARGV[7], resource_ids = released})
end
return {RR_OK, flags, redis.call('HLEN', KEYS[1])}
