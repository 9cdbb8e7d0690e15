-- raise_fence: make every later fencing token of a partition larger than `token`. After a master
-- change the new master's counter may lag the tokens the old one issued (writes it never received);
-- an instance raises it past the largest token it holds before it re-registers anything.
--
-- KEYS[1] fence   rr:{T}:fence
-- ARGV[1] token   (an integer)
-- Returns {0, fence} (the counter after the call)
-- Touches: KEYS[1].

local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
if token > last then
  redis.call('SET', KEYS[1], rr_fmt(token))
  last = token
end
return {RR_OK, last}
