-- Rebuilds an item's keys from a MySQL snapshot taken at binlog version
-- ARGV[1], provided CDC has applied nothing newer (else the snapshot may
-- undo a change: the caller reads again and retries).
-- KEYS[1] stock, KEYS[2] stock's version, KEYS[3] pending, KEYS[4] buyers,
-- KEYS[5] ready, KEYS[6] CDC checkpoint, KEYS[7] invalidation sequence.
-- ARGV[1] snapshot version, ARGV[2] stock, ARGV[3] invalidation channel,
-- ARGV[4] n pending members to drop (their orders exist in MySQL, or they
-- are not "order:user"), then those members, then pairs user, order of
-- the live orders.
-- Pending reservations with no order row are kept (still in flight); the
-- buyers hash becomes the live orders plus the users of those reservations.
-- Returns 1 when rebuilt, 0 to retry, an error when CDC has no checkpoint.
local ckpt = redis.call('HGET', KEYS[6], 'version')
if not ckpt then
  return redis.error_reply('NOCHECKPOINT CDC has not written a checkpoint yet')
end
if tonumber(ckpt) > tonumber(ARGV[1]) then
  return 0
end
local cur = redis.call('GET', KEYS[2])
if (not cur) or tonumber(ARGV[1]) >= tonumber(cur) then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[1])
end
local n = tonumber(ARGV[4])
for i = 5, 4 + n do
  redis.call('ZREM', KEYS[3], ARGV[i])
end
redis.call('DEL', KEYS[4])
for i = 5 + n, #ARGV, 2 do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
end
for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  local sep = string.find(m, ':[^:]*$')
  if sep then
    redis.call('HSETNX', KEYS[4], string.sub(m, sep + 1), string.sub(m, 1, sep - 1))
  end
end
redis.call('SET', KEYS[5], ARGV[1])
local seq = redis.call('INCR', KEYS[7])
redis.call('PUBLISH', ARGV[3], '{"seq":' .. seq .. ',"keys":' .. cjson.encode({KEYS[1], KEYS[3], KEYS[4]}) .. '}')
return 1
