-- Forgets a token: its record, its hash and its last use.
-- KEYS: tokens, token hashes, last uses. ARGV: name. Returns 1 done, 0 there was none.
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then
  return 0
end
redis.call('HDEL', KEYS[2], cjson.decode(record)['hash'])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
