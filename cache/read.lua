-- Read a key; on a miss, try to take the fill lease.
-- KEYS[1] key, KEYS[2] lease; ARGV[1] token, ARGV[2] lease TTL ms.
-- Returns {1, value} on a hit, {0, 1} when the lease was taken, {0, 0}
-- when another reader holds it.
local v = redis.call('GET', KEYS[1])
if v then
  return {1, v}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, 1}
end
return {0, 0}
