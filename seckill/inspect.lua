-- Reads an item's keys in one atomic step (all in its slot, hash tag {id}).
-- KEYS[1] stock, KEYS[2] stock's version, KEYS[3] pending, KEYS[4] buyers,
-- KEYS[5] ready, KEYS[6] outbox.
-- Returns {stock|false, stock version|false, pending (member, score)...,
-- buyers (user, order)..., ready 0/1, outbox order ids...}.
return {
  redis.call('GET', KEYS[1]),
  redis.call('GET', KEYS[2]),
  redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES'),
  redis.call('HGETALL', KEYS[4]),
  redis.call('EXISTS', KEYS[5]),
  redis.call('HKEYS', KEYS[6]),
}
