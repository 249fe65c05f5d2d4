-- Takes lease KEYS[1] if nobody holds it, with a new fencing token.
--
-- KEYS[1] the lease ("<token> <holder>", expires after ARGV[2] ms)
-- KEYS[2] the last token handed out
-- ARGV[1] holder id, ARGV[2] TTL in ms
-- Returns {1, value} when taken, {0, the holder's value} when held.
--
-- The token is the counter plus one, or Redis's clock in microseconds if
-- that is larger: a Redis that came back from an older RDB/AOF file (its
-- counter rewound) still never hands out a token that was used before.
local cur = redis.call('GET', KEYS[1])
if cur then
  return {0, cur}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local tok = string.format('%d', math.max(last + 1, now))
redis.call('SET', KEYS[2], tok)
local v = tok .. ' ' .. ARGV[1]
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return {1, v}
