-- Applies the ops of one batch that fall in one hash slot of a Redis
-- Cluster, atomically for the slot (see Applier.applySlots). The ops are
-- those of apply.lua; what it checks and writes around them differs.
--
-- KEYS[1] the slot's record: a hash of what this source applied there
--         last (ver, file, pos, gtid, commit_us of the batch, and tok, the
--         fencing token of its writer); KEYS[2] and KEYS[4] the record
--         again (not read); KEYS[3] the slot's snapshot journal; then the
--         keys of the ops, as in apply.lua.
-- ARGV[1] "1": the checkpoint exists; else the ops' keys are journaled
-- ARGV[2] "1": the batch ends a transaction, ARGV[3..7] its position
-- ARGV[3] file, ARGV[4] pos, ARGV[5] version, ARGV[6] gtid, ARGV[7] commit µs
-- ARGV[8] tombstone TTL in ms
-- ARGV[9] the writer's fencing token ("0" for none): a record written
--         under a newer token refuses the batch (CSFENCED)
-- ARGV[10] the version this writer last recorded here ("" nothing yet,
--         "0" no position): the record missing means Redis lost the
--         slot's data (CSRESET), an older version that it went back in
--         time (CSREWIND)
-- ARGV[11..13] not read; ARGV[14..] the ops
-- A batch that ends before the recorded version is not applied: the slot
-- holds a later state already (a replay after a crash between the slot
-- groups of a batch). It returns the version recorded after the call, and
-- 1 if the record existed before it, else 0.
local rec = redis.call('HMGET', KEYS[1], 'ver', 'tok')
if rec[2] and tonumber(rec[2]) > tonumber(ARGV[9]) then
  return redis.error_reply('CSFENCED ' .. KEYS[1] .. ' was written under fencing token ' .. rec[2] .. ', newer than ' .. ARGV[9])
end
if ARGV[10] ~= '' then
  if not rec[2] then
    return redis.error_reply('CSRESET ' .. KEYS[1] .. ' missing: Redis lost the data of its slot')
  end
  if tonumber(rec[1] or '0') < tonumber(ARGV[10]) then
    return redis.error_reply('CSREWIND ' .. KEYS[1] .. ' holds version ' .. tostring(rec[1]) .. ', older than ' .. ARGV[10] .. ', which this writer applied')
  end
end
if ARGV[2] == '1' and rec[1] and tonumber(rec[1]) > tonumber(ARGV[5]) then
  return {rec[1], 1}
end
--OPS--
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'ver', ARGV[5], 'file', ARGV[3], 'pos', ARGV[4], 'gtid', ARGV[6], 'commit_us', ARGV[7], 'tok', ARGV[9])
  return {ARGV[5], rec[2] and 1 or 0}
end
redis.call('HSET', KEYS[1], 'tok', ARGV[9])
return {rec[1] or '0', rec[2] and 1 or 0}
