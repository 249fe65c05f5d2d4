-- Reserves one unit of an item for a user, or says why not.
-- KEYS[1] stock (MySQL's stock, mirrored by CDC), KEYS[2] pending zset,
-- KEYS[3] buyers hash, KEYS[4] ready marker, KEYS[5] outbox hash.
-- ARGV[1] user, ARGV[2] order id, ARGV[3] now in ms, ARGV[4] the order's
-- Kafka message.
-- The message goes to the outbox in the same call as the reservation, so
-- a crash before the produce leaves it there for the jobs leader to
-- produce (see outbox.go): no reservation without its order message.
-- Returns {code, x}: {1, available after}; {-1, order id} already bought;
-- {-2, 0} sold out; {-3, 0} not ready (keys missing: Redis lost its data,
-- or the item is being rebuilt).
if redis.call('EXISTS', KEYS[4]) == 0 then
  return {-3, 0}
end
local stock = redis.call('GET', KEYS[1])
if not stock then
  return {-3, 0}
end
local prior = redis.call('HGET', KEYS[3], ARGV[1])
if prior then
  return {-1, prior}
end
local available = tonumber(stock) - redis.call('ZCARD', KEYS[2])
if available <= 0 then
  return {-2, 0}
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2] .. ':' .. ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[5], ARGV[2], ARGV[4])
return {1, available - 1}
