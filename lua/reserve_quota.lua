-- reserve_quota: with several partitions, room for new grants is reserved on the service's slot
-- before they are claimed in the partitions, so that concurrent registrations of one instance never
-- take it above its limit. A reservation expires (a caller that died between steps leaves the
-- instance under-used for a while, never over).
--
-- KEYS[1] instance hash   rr:{S}:instance:I
-- KEYS[2] quota hash      rr:{S}:quota:I   fields: owned, ver, r:<reservation id> = "count|expiry_ms"
-- ARGV[1] reservation id   ARGV[2] count   ARGV[3] limit   ARGV[4] lifetime_ms
-- Returns {1} when the instance is not alive; {2, current, requested, limit}; else {0}.
-- Touches: the keys above.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {RR_INSTANCE_NOT_ALIVE}
end
local now = rr_now_ms()
local fields = redis.call('HGETALL', KEYS[2])
local held, expired = 0, {}
for i = 1, #fields, 2 do
  local name = fields[i]
  if name == 'owned' then
    held = held + tonumber(fields[i + 1])
  elseif string.sub(name, 1, 2) == 'r:' then
    local count, expiry = string.match(fields[i + 1], '^(%d+)|(%d+)$')
    if tonumber(expiry) <= now then
      expired[#expired + 1] = name
    else
      held = held + tonumber(count)
    end
  end
end
if #expired > 0 then
  rr_set_op('HDEL', KEYS[2], expired)
end
local count, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
if held + count > limit then
  return {RR_LIMIT_EXCEEDED, held, count, limit}
end
redis.call('HSET', KEYS[2], 'r:' .. ARGV[1], rr_fmt(count) .. '|' .. rr_fmt(now + tonumber(ARGV[4])))
return {RR_OK}
