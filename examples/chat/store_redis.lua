-- The chat's Redis store: one call runs a whole batch of a worker's jobs,
-- atomically (a script runs alone), and answers one entry per operation.
-- See store_redis.rs for the keys, the arguments and the answers.
--
-- ARGV[1] key prefix ("PREFIX:chat:"), ARGV[2] deadline (ms, Redis clock),
-- ARGV[3] this worker's unit ("node:slot"), ARGV[4] presence TTL (ms),
-- then the operations, each its name and a fixed number of arguments.

local p = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[2]) then
  return redis.error_reply('EXPIRED the batch reached Redis after its deadline; nothing was done')
end
local unit = ARGV[3]
local ttl = ARGV[4]

-- The worker is alive: its rows stay until this expires. Whether it was
-- alive before goes first in the answer (the writer tells a unit that
-- expired while it lived from one that starts).
local was = redis.call('SET', p .. 'alive:' .. unit, '1', 'PX', ttl, 'GET')
redis.call('SADD', p .. 'units', unit)

-- Puts this unit's `conn` (of user `user`) in `room`: 1 when it is the
-- user's first connection there, else 0.
local function enter(room, user, conn)
  if redis.call('SADD', p .. 'conn:' .. conn, room) == 0 then
    return 0
  end
  redis.call('HSET', p .. 'unit:' .. unit, conn, user)
  if redis.call('HINCRBY', p .. 'count:' .. room, user, 1) == 1 then
    return 1
  end
  return 0
end

-- Takes `conn` (of user `user`, of unit `u`) out of `room`: true when it
-- was the user's last connection there.
local function leave(room, user, conn, u)
  local rooms = p .. 'conn:' .. conn
  if redis.call('SREM', rooms, room) == 0 then
    return false
  end
  if redis.call('EXISTS', rooms) == 0 then
    redis.call('HDEL', p .. 'unit:' .. u, conn)
  end
  local counts = p .. 'count:' .. room
  if redis.call('HINCRBY', counts, user, -1) <= 0 then
    redis.call('HDEL', counts, user)
    return true
  end
  return false
end

-- Takes every connection of unit `u` out of every room; appends the
-- (room, user) pairs whose last connection that was to `gone`.
local function reap(u, gone)
  local members = redis.call('HGETALL', p .. 'unit:' .. u)
  for i = 1, #members, 2 do
    local conn, user = members[i], members[i + 1]
    for _, room in ipairs(redis.call('SMEMBERS', p .. 'conn:' .. conn)) do
      if leave(room, user, conn, u) then
        table.insert(gone, room)
        table.insert(gone, user)
      end
    end
  end
  redis.call('DEL', p .. 'unit:' .. u)
end

-- The newest `limit` members of a history below `before` ("+inf" or
-- "(ID"), newest first.
local function page(key, before, limit)
  return redis.call('ZREVRANGEBYSCORE', p .. key, before, '-inf', 'LIMIT', 0, limit)
end

local out = {}
local i = 5
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'say' then
    -- history key, message JSON without its id
    local id = redis.call('INCR', p .. 'id')
    redis.call('ZADD', p .. ARGV[i + 1], id, string.format('%d', id) .. ':' .. ARGV[i + 2])
    table.insert(out, id)
    i = i + 3
  elseif op == 'history' then
    -- history key, before, limit
    table.insert(out, page(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]))
    i = i + 4
  elseif op == 'join' then
    -- room, user, conn, messages wanted: {first, newest messages...}
    local reply = { enter(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]) }
    if tonumber(ARGV[i + 4]) > 0 then
      for _, m in ipairs(page('room:' .. ARGV[i + 1], '+inf', ARGV[i + 4])) do
        table.insert(reply, m)
      end
    end
    table.insert(out, reply)
    i = i + 5
  elseif op == 'rejoin' then
    -- room, user, conn: {first}
    table.insert(out, { enter(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]) })
    i = i + 4
  elseif op == 'leave' then
    -- room, user, conn: 1 when it was the user's last there
    table.insert(out, leave(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], unit) and 1 or 0)
    i = i + 4
  elseif op == 'closed' then
    -- conn, user: the rooms the user is gone from
    local conn, user = ARGV[i + 1], ARGV[i + 2]
    local gone = {}
    for _, room in ipairs(redis.call('SMEMBERS', p .. 'conn:' .. conn)) do
      if leave(room, user, conn, unit) then
        table.insert(gone, room)
      end
    end
    table.insert(out, gone)
    i = i + 3
  elseif op == 'reap' then
    -- node, slot, count: this worker (re)started; its slot's old rows and
    -- those of slots past count go: {room, user, ...} gone
    local node, slot, count = ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    local gone = {}
    for _, u in ipairs(redis.call('SMEMBERS', p .. 'units')) do
      local n, s = string.match(u, '^(.*):(%d+)$')
      if n == node and (tonumber(s) == slot or tonumber(s) >= count) then
        reap(u, gone)
        if u ~= unit then
          redis.call('SREM', p .. 'units', u)
        end
      end
    end
    table.insert(out, gone)
    i = i + 4
  elseif op == 'dead' then
    -- the rows of every unit whose presence expired: {room, user, ...} gone
    local gone = {}
    for _, u in ipairs(redis.call('SMEMBERS', p .. 'units')) do
      if redis.call('EXISTS', p .. 'alive:' .. u) == 0 then
        reap(u, gone)
        redis.call('SREM', p .. 'units', u)
      end
    end
    table.insert(out, gone)
    i = i + 1
  else
    return redis.error_reply('ERR unknown operation ' .. tostring(op))
  end
end
return { was and 1 or 0, out }
