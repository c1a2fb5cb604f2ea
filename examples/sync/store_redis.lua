-- The sync server's Redis store: one call runs a batch of writes or of
-- reads, atomically (a script runs alone). See store_redis.rs for the keys,
-- the encodings and the answers.
--
-- ARGV[1] key prefix ("PREFIX:sync:"), ARGV[2] "write" or "read", ARGV[3]
-- now (ms, the writer's clock: op memory's), ARGV[4] op_ttl (ms), ARGV[5]
-- keep_versions, ARGV[6] the epoch the caller knows, then the operations.

local p = ARGV[1]
local now = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local keep = tonumber(ARGV[5])

-- Redis lost the history under us (restarted without its data, flushed):
-- nothing is read or written under the old epoch, so versions are never
-- reused under it. The caller reads the epoch again (a new one).
if redis.call('GET', p .. 'epoch') ~= ARGV[6] then
  return redis.error_reply('EPOCH the history is gone: its epoch changed')
end

local function int(n)
  return string.format('%d', n)
end

local function doc(key)
  local d = redis.call('HMGET', p .. 'doc:' .. key, 'v', 'val')
  return tonumber(d[1]) or 0, d[2]
end

-- A version as the list and the feed hold it: V,CLIENT,OPLEN,OP then the
-- value (nothing for a delete). Keys and clients hold no ',' or newline.
local function entry(v, client, op, value)
  return int(v) .. ',' .. client .. ',' .. int(#op) .. ',' .. op .. (value or '')
end

local out = {}
local i = 7

local function append(t, items)
  for _, x in ipairs(items) do
    table.insert(t, x)
  end
end

if ARGV[2] == 'write' then
  -- Writes of keys (or ops) with an earlier write of this batch still to
  -- be redone ('S') are redone too, after it: per key, in batch order.
  local stale = {}
  local function remember(opkey, fp, decision)
    redis.call('HSET', opkey, 'fp', fp, 'd', decision, 'exp', int(now + ttl))
    redis.call('PEXPIREAT', opkey, int(now + ttl))
  end
  -- key, base, kind (put|patch|delete), client, op, fingerprint, the
  -- version the patch was merged on (-1 otherwise), too large (1|0), value
  while i <= #ARGV do
    local key, base, kind = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
    local client, op, fp = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
    local merged_on, too_large, value = tonumber(ARGV[i + 6]), ARGV[i + 7] == '1', ARGV[i + 8]
    i = i + 9
    local opkey = p .. 'op:' .. client .. '\n' .. op
    local answer
    if stale['k' .. key] or stale['o' .. opkey] then
      answer = 'S'
    else
      local mem = redis.call('HMGET', opkey, 'fp', 'd', 'exp')
      if mem[1] and tonumber(mem[3]) > now then
        if mem[1] == fp then answer = 'R' .. mem[2] else answer = 'U' end
      else
        local v, current = doc(key)
        local absent = not current
        if not (base == v or (base == 0 and absent)) then
          local decision = 'c' .. int(v) .. ',' .. (current or '')
          remember(opkey, fp, decision)
          answer = 'D' .. decision
        elseif kind == 'delete' and absent then
          answer = 'N'
        elseif kind == 'patch' and merged_on ~= v then
          answer = 'S'
        elseif too_large then
          answer = 'T'
        else
          local nv = v + 1
          local dkey = p .. 'doc:' .. key
          if kind == 'delete' then
            redis.call('HSET', dkey, 'v', int(nv))
            redis.call('HDEL', dkey, 'val')
            redis.call('ZREM', p .. 'present', key)
            value = nil
          else
            redis.call('HSET', dkey, 'v', int(nv), 'val', value)
            redis.call('ZADD', p .. 'present', 0, key)
          end
          local e = entry(nv, client, op, value)
          local vkey = p .. 'ver:' .. key
          redis.call('RPUSH', vkey, e)
          redis.call('LTRIM', vkey, -keep, -1)
          local created = (absent and kind ~= 'delete') and '1' or '0'
          local decision = 'a' .. int(nv) .. ',' .. created
          remember(opkey, fp, decision)
          redis.call('PUBLISH', p .. 'changes', key .. '\n' .. e)
          answer = 'D' .. decision
        end
      end
      if answer == 'S' then
        stale['k' .. key] = true
        stale['o' .. opkey] = true
      end
    end
    table.insert(out, answer)
  end
  return out
end

-- Reads: each operation's answer is an array.
-- The kept versions of a key at v after `after`: from the list, whose last
-- entry is v.
local function after(key, v, a)
  local vkey = p .. 'ver:' .. key
  local first = v - redis.call('LLEN', vkey) + 1
  local start = a + 1 - first
  return start, vkey
end

while i <= #ARGV do
  local op = ARGV[i]
  if op == 'get' then
    -- key: {version, value or nil}
    local v, value = doc(ARGV[i + 1])
    table.insert(out, { v, value })
    i = i + 2
  elseif op == 'sub' then
    -- key, since (-1: none): {version, value or nil, replayed (1|0),
    -- entries...}: replayed when since is within keep of the version and
    -- every version after it is kept
    local key, s = ARGV[i + 1], tonumber(ARGV[i + 2])
    local v, value = doc(key)
    local reply = { v, value, 0 }
    if s >= 0 and s <= v and v - s <= keep then
      local start, vkey = after(key, v, s)
      if start >= 0 then
        reply[3] = 1
        append(reply, redis.call('LRANGE', vkey, start, -1))
      end
    end
    table.insert(out, reply)
    i = i + 3
  elseif op == 'list' then
    -- min, max (ZRANGEBYLEX bounds), limit: {key, version, ...}
    local reply = {}
    local keys = redis.call('ZRANGEBYLEX', p .. 'present', ARGV[i + 1], ARGV[i + 2], 'LIMIT', 0, ARGV[i + 3])
    for _, key in ipairs(keys) do
      table.insert(reply, key)
      table.insert(reply, (doc(key)))
    end
    table.insert(out, reply)
    i = i + 4
  elseif op == 'since' then
    -- key, after: {version, entries after it still kept...}
    local key, a = ARGV[i + 1], tonumber(ARGV[i + 2])
    local v = doc(key)
    local reply = { v }
    if a < v then
      local start, vkey = after(key, v, a)
      append(reply, redis.call('LRANGE', vkey, math.max(start, 0), -1))
    end
    table.insert(out, reply)
    i = i + 3
  elseif op == 'head' then
    -- key: {version}
    table.insert(out, { (doc(ARGV[i + 1])) })
    i = i + 2
  else
    return redis.error_reply('ERR unknown operation ' .. tostring(op))
  end
end
return out
