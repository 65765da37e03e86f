-- Reliable fetch: move up to ARGV[1] jobs from ARGV[2] = n queues into this process's in-flight
-- hashes, one per queue. KEYS[1..n] the queues' lists, in the order to try them; KEYS[n+1..2n]
-- their in-flight hashes, in the same order; KEYS[2n+1] the fencing counter, from which the
-- batch takes its tokens in one INCRBY. Every key is declared: on a Redis Cluster a script that
-- would touch a key moved away mid-run is refused (TRYAGAIN) before it writes anything.
-- ARGV[3], in cluster mode (where each shard has a counter), is the least first token this
-- caller accepts: the first token is then the largest of the counter's next, this floor and
-- Redis's clock in microseconds, so tokens grow across shards as time does ('' otherwise).
-- Each job is held as field <token> = <job string>: acks and settles name the attempt they end
-- by its token, so a stale attempt cannot end a later fetch of the same job. One HSET per queue
-- holds the whole batch. Job strings are never decoded.
-- Returns a flat array: the first token (0 when nothing moved), then queue index (1-based),
-- job string, queue index, job string, ... (tokens follow in order from the first).
local max = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local seq = KEYS[2 * n + 1]
local taken = {}
local moved = 0
for i = 1, n do
  if max <= 0 then break end
  local items = redis.call('RPOP', KEYS[i], max)
  if items then
    taken[#taken + 1] = {i, items}
    max = max - #items
    moved = moved + #items
  end
end
local out = {0}
if moved == 0 then
  return out
end
local token
if ARGV[3] == '' then
  token = redis.call('INCRBY', seq, moved) - moved + 1
else
  local now = redis.call('TIME')
  token = math.max(tonumber(redis.call('GET', seq) or '0') + 1, tonumber(ARGV[3]),
    tonumber(now[1]) * 1000000 + tonumber(now[2]))
  redis.call('SET', seq, string.format('%d', token + moved - 1))
end
out[1] = token
-- The fields are the tokens in decimal. A number or a string.format per job costs Redis a
-- snprintf each; consecutive tokens share all but their last two digits, so each field is a
-- shared prefix joined to one of these constants.
local two = {
  '00', '01', '02', '03', '04', '05', '06', '07', '08', '09', '10', '11', '12', '13', '14', '15', '16', '17', '18', '19',
  '20', '21', '22', '23', '24', '25', '26', '27', '28', '29', '30', '31', '32', '33', '34', '35', '36', '37', '38', '39',
  '40', '41', '42', '43', '44', '45', '46', '47', '48', '49', '50', '51', '52', '53', '54', '55', '56', '57', '58', '59',
  '60', '61', '62', '63', '64', '65', '66', '67', '68', '69', '70', '71', '72', '73', '74', '75', '76', '77', '78', '79',
  '80', '81', '82', '83', '84', '85', '86', '87', '88', '89', '90', '91', '92', '93', '94', '95', '96', '97', '98', '99',
}
local digits = string.format('%d', token)
local prefix, low = '', token
if token >= 100 then
  prefix, low = string.sub(digits, 1, -3), tonumber(string.sub(digits, -2))
end
local o = 1
for b = 1, #taken do
  local i, items = taken[b][1], taken[b][2]
  local inflight = KEYS[n + i]
  local args = {}
  local k = 0
  for j = 1, #items do
    local item = items[j]
    if prefix == '' then
      args[k + 1] = string.format('%d', low)
    else
      args[k + 1] = prefix .. two[low + 1]
    end
    args[k + 2] = item
    k = k + 2
    low = low + 1
    if low == 100 then
      prefix, low = string.format('%d', (tonumber(prefix) or 0) + 1), 0
    end
    out[o + 1] = i
    out[o + 2] = item
    o = o + 2
    if k >= 2000 then
      redis.call('HSET', inflight, unpack(args, 1, k))
      k = 0
    end
  end
  if k > 0 then
    redis.call('HSET', inflight, unpack(args, 1, k))
  end
end
return out
