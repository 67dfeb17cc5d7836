-- Gives a source a new write key if the source is still as the caller read it.
-- KEYS: sources, keys. ARGV: id, the source as read, the source after, new key, old key,
-- the old key's entry ('' to forget it), the new key's entry.
-- Returns 0 done, 1 the source changed meanwhile, 2 the new key is taken.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 1
end
if redis.call('HEXISTS', KEYS[2], ARGV[4]) == 1 then
  return 2
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if ARGV[6] == '' then
  redis.call('HDEL', KEYS[2], ARGV[5])
else
  redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
end
redis.call('HSET', KEYS[2], ARGV[4], ARGV[7])
return 0
