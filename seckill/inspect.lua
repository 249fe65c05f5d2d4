-- Reads an item's keys and the CDC checkpoint in one atomic step.
-- KEYS[1] stock, KEYS[2] stock's version, KEYS[3] pending, KEYS[4] buyers,
-- KEYS[5] ready, KEYS[6] CDC checkpoint, KEYS[7] outbox.
-- Returns {stock|false, stock version|false, pending (member, score)...,
-- buyers (user, order)..., ready 0/1, checkpoint version|false, outbox
-- order ids...}.
return {
  redis.call('GET', KEYS[1]),
  redis.call('GET', KEYS[2]),
  redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES'),
  redis.call('HGETALL', KEYS[4]),
  redis.call('EXISTS', KEYS[5]),
  redis.call('HGET', KEYS[6], 'version'),
  redis.call('HKEYS', KEYS[7]),
}
