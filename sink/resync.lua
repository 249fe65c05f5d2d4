-- One step of a resync: rebuilding Redis as on data loss after it went back
-- to a checkpoint the binlog no longer has (see Applier.Resync).
-- KEYS[1] resync marker, KEYS[2] checkpoint, KEYS[3] sequence counter,
-- KEYS[4] the writer's lease, then (with ARGV[1] "keys") the keys to delete.
-- ARGV[1] "begin": set the marker and delete the checkpoint, together, so
--         that a writer that dies before the end leaves the marker for
--         the next one; "keys": delete KEYS[5..] and announce those of
--         ARGV[5] that existed; "announce": announce them all (a Redis
--         Cluster deleted them per slot, see Applier.deleteKeys); "end":
--         delete the marker.
-- ARGV[2] the lease value KEYS[4] must hold ("" for none), else CSFENCED.
-- ARGV[3] invalidation channel, ARGV[4] the last seq this writer published
-- ("" for none): as in apply.lua, a counter below it jumps past it.
-- ARGV[5..] with "keys": the number n of data keys among KEYS[5..], which
-- come first (the rest are their versions and fill leases), then for each
-- data key its JSON string in the message: "k" and the key (UTF-8), or
-- "b" and the key in base64 (any other).
-- Returns the number of data keys that existed.
if ARGV[2] ~= '' then
  local holder = redis.call('GET', KEYS[4])
  if holder ~= ARGV[2] then
    return redis.error_reply('CSFENCED lease ' .. KEYS[4] .. ' is held by "' .. tostring(holder or '') .. '", not "' .. ARGV[2] .. '"')
  end
end
if ARGV[1] == 'begin' then
  redis.call('SET', KEYS[1], '1')
  redis.call('DEL', KEYS[2])
  return 0
elseif ARGV[1] == 'end' then
  redis.call('DEL', KEYS[1])
  return 0
end
local n = tonumber(ARGV[5])
local gone, text, b64 = 0, {}, {}
for i = 5, 4 + n do
  if ARGV[1] == 'announce' or redis.call('DEL', KEYS[i]) == 1 then
    gone = gone + 1
    local enc = ARGV[i + 1]
    if string.sub(enc, 1, 1) == 'k' then
      text[#text + 1] = string.sub(enc, 2)
    else
      b64[#b64 + 1] = string.sub(enc, 2)
    end
  end
end
for i = 5 + n, #KEYS do
  redis.call('DEL', KEYS[i])
end
if gone > 0 then
  if ARGV[4] ~= '' and tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[4]) then
    redis.call('SET', KEYS[3], string.format('%d', ARGV[4] + 1))
  end
  local seq = redis.call('INCR', KEYS[3])
  local msg = '{"seq":' .. seq .. ',"keys":[' .. table.concat(text, ',') .. ']'
  if #b64 > 0 then
    msg = msg .. ',"keys_b64":[' .. table.concat(b64, ',') .. ']'
  end
  redis.call('PUBLISH', ARGV[3], msg .. '}')
end
return gone
