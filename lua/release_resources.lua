-- release_resources: owner-checked, all-or-nothing release of many ids.
-- If any id is owned by another instance nothing is released. Ids without an owner are reported
-- as already free (release is idempotent).
--
-- KEYS[1] owned set        rr:{S}:owned:I
-- KEYS[2] audit stream     rr:{S}:audit
-- KEYS[2+i]     owner key of resource i   (i = 1..n)
-- ARGV[1..5] see _prelude.lua
-- ARGV[6] reason for the event ('released')   ARGV[7] owner key prefix   ARGV[8] grant key prefix
-- The resource id is the owner key without its prefix; its grant key is grant prefix .. id.
-- Returns {3, owners_flat} (rid, owner, ...) when forbidden, else {0, flags, owned_count} where
-- flags[i] is 1 for a released id and 0 for an id that was already free.
-- Touches: the keys above and the grant keys of the ids (built from the prefix; same hash tag).

local iid = ARGV[2]
local n = #KEYS - 2
local id_from = #ARGV[7] + 1
local ids = {}
local current, foreign = {}, {}
for i = 1, n do
  ids[i] = string.sub(KEYS[2 + i], id_from)
  local cur = redis.call('GET', KEYS[2 + i])
  current[i] = cur
  if cur and cur ~= iid then
    foreign[#foreign + 1] = ids[i]
    foreign[#foreign + 1] = cur
  end
end
if #foreign > 0 then
  return {3, foreign}
end

local flags, released = {}, {}
local own_grant = iid .. '|'
for i = 1, n do
  local rid = ids[i]
  local gkey = ARGV[8] .. rid
  if current[i] then
    redis.call('DEL', KEYS[2 + i], gkey)
    released[#released + 1] = rid
    flags[i] = 1
  else
    local g = redis.call('GET', gkey)
    if g and string.sub(g, 1, #own_grant) == own_grant then
      redis.call('DEL', gkey)
    end
    flags[i] = 0
  end
end
rr_set_op('SREM', KEYS[1], ids)
if #released > 0 then
  rr_emit(KEYS[2], {type = 'ResourceReleased', reason = ARGV[6], resource_ids = released})
end
return {0, flags, redis.call('SCARD', KEYS[1])}
