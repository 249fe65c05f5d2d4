-- Rebuilds an item's keys from a MySQL snapshot taken at binlog version
-- ARGV[1], unless CDC applied a newer change of this item meanwhile (the
-- snapshot could undo it: the caller reads again and retries). Only the
-- item's own keys are taken, all in its slot (hash tag {id}); see
-- Rebuilder.rebuildOnce for why they are enough.
-- KEYS[1] stock, KEYS[2] stock's version, KEYS[3] pending, KEYS[4] buyers,
-- KEYS[5] ready.
-- ARGV[1] snapshot version, ARGV[2] stock, ARGV[3] n pending members to
-- drop (their orders exist in MySQL, or they are not "order:user"), then
-- those members, then triples user, order, seen of the live orders: seen
-- "1" when buyers held user → order when read before the snapshot.
-- Pending reservations with no order row are kept (still in flight); the
-- buyers hash becomes the live orders plus the users of those reservations.
-- Returns 1 when rebuilt, 0 to retry.
local cur = redis.call('GET', KEYS[2])
if cur and tonumber(cur) > tonumber(ARGV[1]) then
  return 0 -- CDC wrote a stock change after the snapshot
end
local n = tonumber(ARGV[3])
for i = 4 + n, #ARGV, 3 do
  if ARGV[i + 2] == '1' and redis.call('HGET', KEYS[4], ARGV[i]) ~= ARGV[i + 1] then
    return 0 -- a live order of the snapshot left buyers since: canceled after it
  end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
for i = 4, 3 + n do
  redis.call('ZREM', KEYS[3], ARGV[i])
end
redis.call('DEL', KEYS[4])
for i = 4 + n, #ARGV, 3 do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
end
for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  local sep = string.find(m, ':[^:]*$')
  if sep then
    redis.call('HSETNX', KEYS[4], string.sub(m, sep + 1), string.sub(m, 1, sep - 1))
  end
end
redis.call('SET', KEYS[5], ARGV[1])
return 1
