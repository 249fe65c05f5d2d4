-- Fill a key only if our lease still holds: cachesync's invalidation of
-- the key deletes the lease, so a value read before the change is refused.
-- KEYS[1] key, KEYS[2] lease; ARGV[1] token, ARGV[2] value, ARGV[3] TTL ms.
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
