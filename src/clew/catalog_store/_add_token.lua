-- Adds a token unless its name or hash is taken.
-- KEYS: tokens, token hashes. ARGV: name, hash, the token's record.
-- Returns 0 done, 1 the name is taken, 2 the hash is.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return 1
end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  return 2
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return 0
