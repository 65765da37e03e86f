-- Batches (the model in errand_core::broker::batch): create, add, record. One script, so a
-- record and everything it causes (callbacks pushed, workflow steps pushed or cancelled, the
-- parent's record when the batch completes) is one atomic step.
--
-- Keys of batch B under prefix P (ARGV[2], e.g. `errand:batch:`):
--   P..B            hash: parent, desc, created_at, keep (ms), policy, workflow, total,
--                   complete_at, success_at, death_at, cb:<event> (callback head), cbq:<event>
--                   (its queue), callbacks (event names, comma-separated)
--   P..B..':pending'   set: members not succeeded nor dead (with `building`, waiting steps)
--   P..B..':failed'    set: pending members that failed
--   P..B..':dead'      set: dead members
--   P..B..':cancelled' set: cancelled workflow steps
--   P..B..':waiting'   hash: waiting step jid -> parents still to succeed
--   P..B..':steps'     hash: 'h:'..jid -> the step's head, 'q:'..jid -> its queue
--   P..B..':next'      hash: jid -> JSON array of the waiting steps that need it
-- ARGV[1] the operation, ARGV[2] P, ARGV[3] the queue key prefix, ARGV[4] the queue names set,
-- ARGV[5] the batch index (zset by created_at), ARGV[6] the schedule set; in cluster mode
-- ARGV[3] and ARGV[6] are '' and ARGV[4] is the fleet's outbox: jobs to push go there as
-- '<queue>\n<payload>' ('\t<score>\n<payload>' to schedule), for the caller to push on. KEYS[1]
-- is the batch index (it routes the script to the fleet's slot); then per operation:
--   create: bid, parent or '', desc, keep ms, max age ms, policy, workflow or '', n callbacks,
--           (event, queue, head) * n, m steps, (jid, queue, head, parents JSON) * m.
--           Returns 1 (created), 0 (it existed) or -1 (the parent is gone or complete).
--   add:    bid, n now, (jid, queue, payload) * n, m later, (jid, score, payload) * m.
--           Returns 1, or -1 (the batch is gone or complete; nothing stored).
--   record: enqueued_at, then (bid, member, outcome: succeeded | failed | died) * n, applied
--           in order. Returns one {released, cancelled, bid1, event1, bid2, event2, ...} per
--           record.
local op, P, QP, QS, INDEX, SCHEDULE = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local SUFFIXES = {':pending', ':failed', ':dead', ':cancelled', ':waiting', ':steps', ':next'}

local function k(bid, suffix)
  return P .. bid .. (suffix or '')
end

-- Cluster mode: the keys of the batches the call names are declared (KEYS[3..]), so Redis
-- refuses a run while they are split between nodes. Their parents up the chain are found as the
-- script runs: each is read first with pcall, and if one is being moved to another node (a
-- resharding of the fleet's slot) the run stops before any write with TRYAGAIN, which the
-- client retries once the slot has moved.
local function probe(bids)
  local seen = {}
  for _, bid in ipairs(bids) do
    local b = bid
    while b and b ~= '' and not seen[b] do
      seen[b] = true
      for _, key in ipairs({k(b), k(b, ':pending'), k(b, ':failed'), k(b, ':dead'),
          k(b, ':cancelled'), k(b, ':waiting'), k(b, ':steps'), k(b, ':next')}) do
        local ok = redis.pcall('EXISTS', key)
        if type(ok) == 'table' and ok.err then
          return false
        end
      end
      local parent = redis.pcall('HGET', k(b), 'parent')
      if type(parent) == 'table' and parent.err then
        return false
      end
      -- A parent whose record is missing here is being moved (a batch's parent outlives it).
      if parent and parent ~= '' and redis.pcall('EXISTS', k(parent)) ~= 1 then
        return false
      end
      b = parent
    end
  end
  return true
end

if QP == '' then
  local bids = {}
  if op == 'create' then
    bids = {ARGV[7], ARGV[8]}
  elseif op == 'add' then
    bids = {ARGV[7]}
  else
    for i = 8, #ARGV, 3 do
      bids[#bids + 1] = ARGV[i]
    end
  end
  if not probe(bids) then
    return redis.error_reply('TRYAGAIN batch keys are moving between cluster nodes')
  end
end

local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end

local function expire_all(bid, ms)
  redis.call('PEXPIRE', k(bid), ms)
  for _, s in ipairs(SUFFIXES) do
    redis.call('PEXPIRE', k(bid, s), ms)
  end
end

-- Gives every key of the batch the meta hash's TTL (sets created after the batch get it too).
local function touch(bid)
  local ttl = redis.call('PTTL', k(bid))
  if ttl > 0 then
    for _, s in ipairs(SUFFIXES) do
      redis.call('PEXPIRE', k(bid, s), ttl)
    end
  end
end

-- Adds `member` to the batch's set `suffix`; a set this creates gets the meta hash's TTL (the
-- hot path touches one key, not every key of the batch).
local function join(bid, suffix, member)
  if redis.call('SADD', k(bid, suffix), member) == 1
      and redis.call('SCARD', k(bid, suffix)) == 1 then
    local ttl = redis.call('PTTL', k(bid))
    if ttl > 0 then
      redis.call('PEXPIRE', k(bid, suffix), ttl)
    end
  end
end

local function push(queue, payload)
  if QP == '' then
    -- Cluster mode: QS is the fleet's outbox.
    redis.call('RPUSH', QS, queue .. '\n' .. payload)
    return
  end
  redis.call('SADD', QS, queue)
  redis.call('LPUSH', QP .. queue, payload)
end

local function open(bid)
  return redis.call('EXISTS', k(bid)) == 1 and redis.call('HEXISTS', k(bid), 'complete_at') == 0
end

if op == 'create' then
  local bid, parent = ARGV[7], ARGV[8]
  if redis.call('EXISTS', k(bid)) == 1 then
    return 0
  end
  if parent ~= '' then
    if not open(parent) then
      return -1
    end
    if redis.call('SADD', k(parent, ':pending'), 'child:' .. bid) == 1 then
      redis.call('HINCRBY', k(parent), 'total', 1)
    end
    touch(parent)
  end
  local meta = k(bid)
  redis.call('HSET', meta, 'parent', parent, 'desc', ARGV[9], 'created_at', tostring(now()),
    'keep', ARGV[10], 'policy', ARGV[12], 'workflow', ARGV[13], 'total', 0)
  local i = 14
  local ncb = tonumber(ARGV[i])
  local events = {}
  for j = 1, ncb do
    local event = ARGV[i + 1]
    redis.call('HSET', meta, 'cb:' .. event, ARGV[i + 3], 'cbq:' .. event, ARGV[i + 2])
    events[#events + 1] = event
    i = i + 3
  end
  redis.call('HSET', meta, 'callbacks', table.concat(events, ','))
  redis.call('SADD', k(bid, ':pending'), 'building')
  i = i + 1
  local nsteps = tonumber(ARGV[i])
  for j = 1, nsteps do
    local jid, queue, head = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local parents = cjson.decode(ARGV[i + 4])
    redis.call('SADD', k(bid, ':pending'), jid)
    redis.call('HSET', k(bid, ':waiting'), jid, #parents)
    redis.call('HSET', k(bid, ':steps'), 'h:' .. jid, head, 'q:' .. jid, queue)
    for _, p in ipairs(parents) do
      local next = redis.call('HGET', k(bid, ':next'), p)
      local list = next and cjson.decode(next) or {}
      list[#list + 1] = jid
      redis.call('HSET', k(bid, ':next'), p, cjson.encode(list))
    end
    i = i + 4
  end
  redis.call('HSET', meta, 'total', nsteps)
  local created = redis.call('HGET', meta, 'created_at')
  redis.call('ZADD', INDEX, created, bid)
  -- Batches that never completed are gone after the longest age: so are their index entries.
  redis.call('ZREMRANGEBYSCORE', INDEX, '-inf', '(' .. tostring(tonumber(created) - ARGV[11] / 1000))
  expire_all(bid, ARGV[11])
  return 1
end

-- A new member is pending; one already pending, dead or cancelled is not counted again.
local function add_member(bid, jid)
  if redis.call('SISMEMBER', k(bid, ':dead'), jid) == 1
      or redis.call('SISMEMBER', k(bid, ':cancelled'), jid) == 1 then
    return 0
  end
  return redis.call('SADD', k(bid, ':pending'), jid)
end

if op == 'add' then
  local bid = ARGV[7]
  if not open(bid) then
    return -1
  end
  local i = 8
  local n = tonumber(ARGV[i])
  local added = 0
  for j = 1, n do
    added = added + add_member(bid, ARGV[i + 1])
    push(ARGV[i + 2], ARGV[i + 3])
    i = i + 3
  end
  i = i + 1
  local m = tonumber(ARGV[i])
  for j = 1, m do
    added = added + add_member(bid, ARGV[i + 1])
    if SCHEDULE == '' then
      redis.call('RPUSH', QS, '\t' .. ARGV[i + 2] .. '\n' .. ARGV[i + 3])
    else
      redis.call('ZADD', SCHEDULE, ARGV[i + 2], ARGV[i + 3])
    end
    i = i + 3
  end
  redis.call('HINCRBY', k(bid), 'total', added)
  touch(bid)
  return 1
end

-- record
local AT = ARGV[7]
local out
-- What one run learns about a batch once and keeps up to date itself (a run is atomic, and
-- records neither create nor delete a batch, nor add steps): whether it exists, whether it is
-- a workflow, how many members are pending, whether any member has failed.
local memo = {}
local function facts(bid)
  local f = memo[bid]
  if not f then
    f = {exists = redis.call('EXISTS', k(bid)) == 1}
    if f.exists then
      f.workflow = redis.call('EXISTS', k(bid, ':next')) == 1
      f.pending = redis.call('SCARD', k(bid, ':pending'))
      f.failed = redis.call('EXISTS', k(bid, ':failed')) == 1
    end
    memo[bid] = f
  end
  return f
end

-- Removes `member` from pending, keeping the count. True when it was there.
local function unpend(bid, member)
  if redis.call('SREM', k(bid, ':pending'), member) == 1 then
    local f = facts(bid)
    f.pending = f.pending - 1
    return true
  end
  return false
end

local function fire(bid, event)
  local head = redis.call('HGET', k(bid), 'cb:' .. event)
  if head then
    push(redis.call('HGET', k(bid), 'cbq:' .. event), head .. ',"enqueued_at":' .. AT .. '}')
    out[#out + 1] = bid
    out[#out + 1] = event
  end
end

-- The waiting steps that needed `member` and nothing else still are pushed.
local function release(bid, member)
  if not facts(bid).workflow then
    return
  end
  local next = redis.call('HGET', k(bid, ':next'), member)
  if not next then
    return
  end
  for _, step in ipairs(cjson.decode(next)) do
    if redis.call('HEXISTS', k(bid, ':waiting'), step) == 1 then
      if redis.call('HINCRBY', k(bid, ':waiting'), step, -1) <= 0 then
        redis.call('HDEL', k(bid, ':waiting'), step)
        local steps = redis.call('HMGET', k(bid, ':steps'), 'h:' .. step, 'q:' .. step)
        push(steps[2], steps[1] .. ',"enqueued_at":' .. AT .. '}')
        out[1] = out[1] + 1
      end
    end
  end
end

local function cancel_step(bid, step)
  redis.call('HDEL', k(bid, ':waiting'), step)
  unpend(bid, step)
  join(bid, ':cancelled', step)
  out[2] = out[2] + 1
end

-- Cancels waiting steps after `member` died: all of them, or those that need it.
local function cancel(bid, member)
  if not facts(bid).workflow or redis.call('HLEN', k(bid, ':waiting')) == 0 then
    return
  end
  if redis.call('HGET', k(bid), 'policy') == 'cancel_all' then
    for _, step in ipairs(redis.call('HKEYS', k(bid, ':waiting'))) do
      cancel_step(bid, step)
    end
    return
  end
  local todo = {member}
  while #todo > 0 do
    local next = redis.call('HGET', k(bid, ':next'), table.remove(todo))
    if next then
      for _, step in ipairs(cjson.decode(next)) do
        if redis.call('HEXISTS', k(bid, ':waiting'), step) == 1 then
          cancel_step(bid, step)
          todo[#todo + 1] = step
        end
      end
    end
  end
end

local record

-- After a change: complete and success, each the first time, and the parent's record.
local function settle(bid)
  local meta = k(bid)
  if facts(bid).pending > 0 then
    return
  end
  local t = tostring(now())
  local completed = redis.call('HSETNX', meta, 'complete_at', t) == 1
  local succeeded = false
  if redis.call('SCARD', k(bid, ':dead')) + redis.call('SCARD', k(bid, ':cancelled')) == 0 then
    succeeded = redis.call('HSETNX', meta, 'success_at', t) == 1
  end
  if completed then
    fire(bid, 'complete')
    expire_all(bid, redis.call('HGET', meta, 'keep'))
  end
  if succeeded then
    fire(bid, 'success')
  end
  local parent = redis.call('HGET', meta, 'parent')
  if parent and parent ~= '' then
    if succeeded then
      record(parent, 'child:' .. bid, 'succeeded')
    elseif completed then
      record(parent, 'child:' .. bid, 'died')
    end
  end
end

record = function(bid, member, outcome)
  local f = facts(bid)
  if not f.exists then
    return
  end
  -- No attempt ends a step not pushed yet, and only a success seals a batch.
  if (member == 'building' and outcome ~= 'succeeded')
      or (f.workflow and redis.call('HEXISTS', k(bid, ':waiting'), member) == 1) then
    return
  end
  if outcome == 'succeeded' then
    if unpend(bid, member) then
      if f.failed then
        redis.call('SREM', k(bid, ':failed'), member)
      end
    elseif redis.call('SREM', k(bid, ':dead'), member) == 0 then
      return
    end
    release(bid, member)
  elseif outcome == 'failed' then
    if redis.call('SISMEMBER', k(bid, ':pending'), member) == 1 then
      join(bid, ':failed', member)
      f.failed = true
    end
    return
  else
    if not unpend(bid, member) then
      return
    end
    if f.failed then
      redis.call('SREM', k(bid, ':failed'), member)
    end
    join(bid, ':dead', member)
    if redis.call('HSETNX', k(bid), 'death_at', tostring(now())) == 1 then
      fire(bid, 'death')
    end
    cancel(bid, member)
  end
  settle(bid)
end

local all = {}
for i = 8, #ARGV, 3 do
  out = {0, 0}
  record(ARGV[i], ARGV[i + 1], ARGV[i + 2])
  all[#all + 1] = out
end
return all
