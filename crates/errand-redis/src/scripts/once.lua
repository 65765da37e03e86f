-- A once-only step's record: the hash KEYS[1] with `owner` (the attempt holding the claim)
-- and, once the step completed, `out` (its output). The key's TTL is the claim's lease, then
-- how long the completed record is kept, so a dead holder's claim ends by itself.
-- ARGV[1] operation: claim | renew | complete | release, ARGV[2] owner,
-- ARGV[3] lease or keep in ms (claim, renew, complete), ARGV[4] output (complete).
-- claim returns {0, ''} claimed, {1, ''} busy, {2, out} done; the others return 1 when they applied.
local op, owner = ARGV[1], ARGV[2]
local held = redis.call('HMGET', KEYS[1], 'owner', 'out')
local holder, out = held[1], held[2]
if op == 'claim' then
  if out then
    return {2, out}
  end
  if holder and holder ~= owner then
    return {1, ''}
  end
  redis.call('HSET', KEYS[1], 'owner', owner)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {0, ''}
end
if out or holder ~= owner then
  return 0
end
if op == 'renew' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
elseif op == 'complete' then
  redis.call('HSET', KEYS[1], 'out', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
elseif op == 'release' then
  redis.call('DEL', KEYS[1])
end
return 1
