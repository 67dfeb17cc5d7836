-- Marks a source removed if it is still as the caller read it, forgetting its retired keys.
-- KEYS: sources, keys. ARGV: id, the source as read, the source after, retired keys...
-- Returns 1 done, 0 the source changed meanwhile.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
for i = 4, #ARGV do
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return 1
