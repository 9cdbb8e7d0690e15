-- release_resources: owner-checked, all-or-nothing release of many ids.
-- If any id is owned by another instance nothing is released. Ids without an owner are reported
-- as already free (release is idempotent); a stale grant record of theirs in the caller's owned
-- hash is dropped too.
--
-- KEYS[1] owned hash       rr:{S}:owned:I
-- KEYS[2] audit stream     rr:{S}:audit
-- KEYS[2+i]     owner key of resource i   (i = 1..n)
-- ARGV[1..6] see _prelude.lua
-- ARGV[7] reason for the event ('released')   ARGV[8] owner key prefix
-- The resource id is the owner key without its prefix.
-- Returns {3, owners_flat} (rid, owner, ...) when forbidden, else {0, flags, owned_count} where
-- flags[i] is 1 for a released id and 0 for an id that was already free.
-- Touches: the keys above.

local iid = ARGV[2]
local n = #KEYS - 2
local id_from = #ARGV[8] + 1
local ids, current, foreign = {}, rr_mget(KEYS, 3, 2 + n), {}
for i = 1, n do
  ids[i] = string.sub(KEYS[2 + i], id_from)
  local cur = current[i]
  if cur and cur ~= iid then
    foreign[#foreign + 1] = ids[i]
    foreign[#foreign + 1] = cur
  end
end
if #foreign > 0 then
  return {3, foreign}
end

local flags, released, dels = {}, {}, {}
for i = 1, n do
  if current[i] then
    dels[#dels + 1] = KEYS[2 + i]
    released[#released + 1] = ids[i]
    flags[i] = 1
  else
    flags[i] = 0
  end
end
rr_chunked('DEL', dels)
rr_set_op('HDEL', KEYS[1], ids)
if #released > 0 then
  rr_emit(KEYS[2], {type = 'ResourceReleased', reason = ARGV[7], resource_ids = released})
end
return {0, flags, redis.call('HLEN', KEYS[1])}
