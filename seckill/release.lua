-- Releases a reservation that will never reach MySQL (its order was
-- fenced after a produce that wrote nothing): removes it from pending and
-- the outbox, and the user from buyers if the entry still names this
-- order.
-- KEYS[1] pending, KEYS[2] buyers, KEYS[3] outbox. ARGV[1] user, ARGV[2]
-- order id.
local n = redis.call('ZREM', KEYS[1], ARGV[2] .. ':' .. ARGV[1])
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[1])
end
redis.call('HDEL', KEYS[3], ARGV[2])
return n
