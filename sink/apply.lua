-- Applies one batch of binlog transactions to Redis, atomically, together
-- with the checkpoint and the invalidation message.
--
-- KEYS[1] checkpoint hash, KEYS[2] sequence counter, KEYS[3] snapshot
-- journal, KEYS[4] the writer's lease (see ARGV[12]), then the keys of the
-- ops, consumed in order (every op names its keys by position).
-- ARGV[1]  what must exist, else Redis lost its data: "1" the checkpoint,
--          at version ARGV[11]; "J" the snapshot journal (no checkpoint
--          yet); "0" nothing (the first batch without a checkpoint). Unless
--          "1", the key of every M, Y, h, S, H, X, A and HA op is added to the
--          journal, which the first batch creates and writing the
--          checkpoint deletes: a snapshot cut short can be undone (see
--          Applier.DiscardUnfinishedSnapshot). R and HR are not journaled:
--          they only remove, and deleting the whole key (often filled by the
--          application, like a sale's pending set) would undo nothing.
-- ARGV[2]  "1": write the checkpoint (ARGV[3..7])
-- ARGV[3]  file, ARGV[4] pos, ARGV[5] version, ARGV[6] gtid, ARGV[7] commit µs
-- ARGV[8]  tombstone TTL in ms
-- ARGV[9]  invalidation channel
-- ARGV[10] the keys to announce, as the message's fields after seq:
--          "keys":[...] and, for keys that are not UTF-8, "keys_b64":[...]
--          ("" for none)
-- ARGV[11] with ARGV[1] "1": the checkpoint version this batch follows
--          (compare-and-set). Older in Redis: Redis went back in time (an
--          RDB/AOF restore, a failover to a lagging replica) and the batches
--          in between are lost there: CSREWIND. Newer: another writer moved
--          it: CSCONFLICT.
-- ARGV[12] the lease value KEYS[4] must hold ("" for none): a writer whose
--          term ended (another process took the lease, or it expired) is
--          refused: CSFENCED.
-- ARGV[13] the last seq this writer published ("" for none): a counter
--          below it went back with a rewound Redis and jumps past it when
--          the next message is published, so that subscribers see a gap.
-- ARGV[14..] ops, with the keys they take from KEYS:
--   D n                keys k1, l1 .. kn, ln: DEL them in pairs (the resync
--                      request; invalidations go as Y, see batch.invalidate)
--   M n v1 .. vn       keys k1 .. kn: MSET k1 v1 .. kn vn (no versions: the
--                      stream applies in binlog order under one writer)
--   Y n                keys k1 .. kn: DEL them (no tombstones, as M)
--   h n f1 x1 ..       key k: DEL k, then HSET its n fields (as M)
--   S ver val          keys k, v: if ver >= version(v): SET k val, SET v ver
--   H ver n f1 x1 ..   keys k, v: same, as a hash of n fields
--   X ver              keys k, v: if ver >= version(v): DEL k, SET v ver PX ttl
--   A m                key k: SADD member m to set k (k: set or none)
--   R m                key k: SREM, or ZREM if k is a sorted set, member m
--                      (k: set, zset or none)
--   HA m v             key k: HSET field m of hash k to v (k: hash or none)
--   HR m v             key k: HDEL field m of hash k if it holds v (compare
--                      and delete: an older row never removes what a newer
--                      one wrote) (k: hash or none)
--   P f v              key k: HSET field f of hash k (the snapshot progress)
--                      to v, unless it holds "request" (a snapshot of the
--                      table was requested meanwhile: the next run does it)
--   B n s1 .. sn       key k: SETBIT k s 1 for each s (on a Redis Cluster:
--                      the slots this source has written, see
--                      Applier.applySlots)
-- Every check that can fail runs before the first write, so a batch is
-- applied whole or not at all. The checks follow the member ops' keys
-- through the batch: an A or HA on a missing key makes it a set or a hash
-- for the ops after it.
local stored
if ARGV[1] == '1' then
  stored = redis.call('HGET', KEYS[1], 'version')
  if not stored then
    return redis.error_reply('CSRESET checkpoint missing: Redis lost its data')
  end
  if stored ~= ARGV[11] and tonumber(stored) < tonumber(ARGV[11]) then
    return redis.error_reply('CSREWIND checkpoint ' .. stored .. ' is older than ' .. ARGV[11] .. ', which this writer applied')
  end
end
if ARGV[1] == 'J' and redis.call('EXISTS', KEYS[3]) == 0 then
  return redis.error_reply('CSRESET snapshot journal missing: Redis lost its data')
end
if ARGV[12] ~= '' then
  local holder = redis.call('GET', KEYS[4])
  if holder ~= ARGV[12] then
    return redis.error_reply('CSFENCED lease ' .. KEYS[4] .. ' is held by "' .. tostring(holder or '') .. '", not "' .. ARGV[12] .. '"')
  end
end
if stored and stored ~= ARGV[11] then
  return redis.error_reply('CSCONFLICT checkpoint ' .. stored .. ' is newer than ' .. ARGV[11] .. ': another writer moved it')
end
-- ops: shared with slot.lua (everything up to "end of ops")
local n = #ARGV
local types = {} -- key of a member op -> what it holds at this point of the batch
local function typeof(key)
  local t = types[key]
  if not t then
    t = redis.call('TYPE', key).ok
    types[key] = t
  end
  return t
end
local function wrongtype(key, t, want)
  return redis.error_reply('WRONGTYPE member rule: ' .. key .. ' holds a ' .. t .. ', not a ' .. want)
end
local i, k = 14, 5
while i <= n do
  local op = ARGV[i]
  if op == 'D' then i, k = i + 2, k + 2 * tonumber(ARGV[i + 1])
  elseif op == 'M' then i, k = i + 2 + tonumber(ARGV[i + 1]), k + tonumber(ARGV[i + 1])
  elseif op == 'Y' then i, k = i + 2, k + tonumber(ARGV[i + 1])
  elseif op == 'h' then i, k = i + 2 + 2 * tonumber(ARGV[i + 1]), k + 1
  elseif op == 'S' then i, k = i + 3, k + 2
  elseif op == 'X' then i, k = i + 2, k + 2
  elseif op == 'H' then i, k = i + 3 + 2 * tonumber(ARGV[i + 2]), k + 2
  elseif op == 'A' then
    local t = typeof(KEYS[k])
    if t ~= 'set' and t ~= 'none' then
      return wrongtype(KEYS[k], t, 'set')
    end
    types[KEYS[k]] = 'set'
    i, k = i + 2, k + 1
  elseif op == 'R' then
    local t = typeof(KEYS[k])
    if t ~= 'set' and t ~= 'zset' and t ~= 'none' then
      return wrongtype(KEYS[k], t, 'set or sorted set')
    end
    i, k = i + 2, k + 1
  elseif op == 'P' then
    i, k = i + 3, k + 1
  elseif op == 'B' then
    i, k = i + 2 + tonumber(ARGV[i + 1]), k + 1
  elseif op == 'HA' or op == 'HR' then
    local t = typeof(KEYS[k])
    if t ~= 'hash' and t ~= 'none' then
      return wrongtype(KEYS[k], t, 'hash')
    end
    if op == 'HA' then
      types[KEYS[k]] = 'hash'
    end
    i, k = i + 3, k + 1
  else
    return redis.error_reply('ERR bad op ' .. tostring(op))
  end
end
local journal = ARGV[1] ~= '1'
if journal then
  redis.call('SADD', KEYS[3], '') -- exists from the first batch on
end
local function note(k)
  if journal then
    redis.call('SADD', KEYS[3], k)
  end
end
local function noteRun(k, nk)
  if journal then
    redis.call('SADD', KEYS[3], unpack(KEYS, k, k + nk - 1))
  end
end
local function newer(vk, ver)
  local cur = redis.call('GET', vk)
  return (not cur) or tonumber(ver) >= tonumber(cur)
end
i, k = 14, 5
while i <= n do
  local op = ARGV[i]
  if op == 'D' then
    local nk = 2 * tonumber(ARGV[i + 1])
    redis.call('DEL', unpack(KEYS, k, k + nk - 1))
    i, k = i + 2, k + nk
  elseif op == 'M' then
    local nk = tonumber(ARGV[i + 1])
    local kv = {}
    for j = 0, nk - 1 do
      kv[2 * j + 1] = KEYS[k + j]
      kv[2 * j + 2] = ARGV[i + 2 + j]
    end
    redis.call('MSET', unpack(kv))
    noteRun(k, nk)
    i, k = i + 2 + nk, k + nk
  elseif op == 'Y' then
    local nk = tonumber(ARGV[i + 1])
    redis.call('DEL', unpack(KEYS, k, k + nk - 1))
    noteRun(k, nk)
    i, k = i + 2, k + nk
  elseif op == 'h' then
    local nf = tonumber(ARGV[i + 1])
    redis.call('DEL', KEYS[k])
    if nf > 0 then
      redis.call('HSET', KEYS[k], unpack(ARGV, i + 2, i + 1 + 2 * nf))
    end
    note(KEYS[k])
    i, k = i + 2 + 2 * nf, k + 1
  elseif op == 'S' then
    local ver = ARGV[i + 1]
    if newer(KEYS[k + 1], ver) then
      redis.call('SET', KEYS[k], ARGV[i + 2])
      redis.call('SET', KEYS[k + 1], ver)
    end
    note(KEYS[k])
    i, k = i + 3, k + 2
  elseif op == 'H' then
    local ver, nf = ARGV[i + 1], tonumber(ARGV[i + 2])
    if newer(KEYS[k + 1], ver) then
      redis.call('DEL', KEYS[k])
      if nf > 0 then
        redis.call('HSET', KEYS[k], unpack(ARGV, i + 3, i + 2 + 2 * nf))
      end
      redis.call('SET', KEYS[k + 1], ver)
    end
    note(KEYS[k])
    i, k = i + 3 + 2 * nf, k + 2
  elseif op == 'X' then
    local ver = ARGV[i + 1]
    if newer(KEYS[k + 1], ver) then
      redis.call('DEL', KEYS[k])
      redis.call('SET', KEYS[k + 1], ver, 'PX', ARGV[8])
    end
    note(KEYS[k])
    i, k = i + 2, k + 2
  elseif op == 'A' then
    redis.call('SADD', KEYS[k], ARGV[i + 1])
    note(KEYS[k])
    i, k = i + 2, k + 1
  elseif op == 'R' then
    if types[KEYS[k]] == 'zset' then -- nothing in a batch makes a zset
      redis.call('ZREM', KEYS[k], ARGV[i + 1])
    else
      redis.call('SREM', KEYS[k], ARGV[i + 1])
    end
    i, k = i + 2, k + 1
  elseif op == 'HA' then
    redis.call('HSET', KEYS[k], ARGV[i + 1], ARGV[i + 2])
    note(KEYS[k])
    i, k = i + 3, k + 1
  elseif op == 'P' then
    if redis.call('HGET', KEYS[k], ARGV[i + 1]) ~= 'request' then
      redis.call('HSET', KEYS[k], ARGV[i + 1], ARGV[i + 2])
    end
    i, k = i + 3, k + 1
  elseif op == 'B' then
    for j = 1, tonumber(ARGV[i + 1]) do
      redis.call('SETBIT', KEYS[k], ARGV[i + 1 + j], 1)
    end
    i, k = i + 2 + tonumber(ARGV[i + 1]), k + 1
  else -- 'HR'
    if redis.call('HGET', KEYS[k], ARGV[i + 1]) == ARGV[i + 2] then
      redis.call('HDEL', KEYS[k], ARGV[i + 1])
    end
    i, k = i + 3, k + 1
  end
end
-- end of ops
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'file', ARGV[3], 'pos', ARGV[4], 'version', ARGV[5], 'gtid', ARGV[6], 'commit_us', ARGV[7])
  if journal then
    redis.call('DEL', KEYS[3])
  end
end
if ARGV[10] ~= '' then
  if ARGV[13] ~= '' and tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[13]) then
    redis.call('SET', KEYS[2], string.format('%d', ARGV[13] + 1))
  end
  local seq = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', ARGV[9], '{"seq":' .. seq .. ',' .. ARGV[10] .. '}')
  return seq
end
return 0
