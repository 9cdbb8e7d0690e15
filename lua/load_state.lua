-- load_state: a resource's state as it was last written (reads are not fenced: only writes are).
--
-- KEYS[1] state key of the resource     rr:{T}:state:R
-- Returns {0} when there is no state, else {0, value, version, token}.
-- Touches: KEYS[1] (read only).

local stored = redis.call('HMGET', KEYS[1], 'v', 'ver', 'tok')
if not stored[1] then
  return {RR_OK}
end
return {RR_OK, stored[1], tonumber(stored[2]), tonumber(stored[3])}
