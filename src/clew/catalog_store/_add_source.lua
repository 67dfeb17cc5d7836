-- Adds a source unless its name (folded) or its write key is taken.
-- KEYS: sources, names, keys. ARGV: id, folded name, write key, the source, the key's entry.
local same = redis.call('HGET', KEYS[2], ARGV[2])
if same then
  return {1, redis.call('HGET', KEYS[1], same)}
end
if redis.call('HEXISTS', KEYS[3], ARGV[3]) == 1 then
  return {2}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[5])
return {0}
