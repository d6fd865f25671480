//! The cluster's Lua scripts. Each runs atomically in Redis, so a check and what it guards
//! (the fencing token and an append, the lease and its renewal) cannot be separated.

use redis::Script;

/// The cluster's Lua scripts (`EVALSHA`, loaded on first use): each runs atomically in Redis.
#[derive(Debug)]
pub(super) struct Scripts {
    pub acquire: Script,
    pub renew: Script,
    pub release: Script,
    pub append: Script,
    pub open: Script,
}

/// Takes the lease when nobody holds it. KEYS: lease, fence. ARGV: TTL ms, instance, the
/// fence's TTL ms. Returns the fencing token, or nil.
const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local n = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local token = n .. ':' .. ARGV[2]
redis.call('SET', KEYS[1], token, 'PX', ARGV[1])
return token
";

/// Renews the lease while some instance has viewers. KEYS: lease, interest, stream. ARGV:
/// token, TTL ms, the stream's live TTL ms. Returns 1 (renewed), 0 (not ours) or -1 (let go: no
/// viewer anywhere).
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1])
  return -1
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
";

/// Lets go of the lease if it is still ours. KEYS: lease. ARGV: token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Appends entries if the lease is still ours (fencing). KEYS: stream, lease. ARGV: token,
/// entries to keep, the stream's TTL ms, then per entry: id, field count, fields. Entries at or
/// below the stream's last id are skipped. Past the entries to keep (in steps of 64, as `MAXLEN
/// ~` would), the oldest are trimmed away and the newest of them is recorded as the stream's
/// `max-deleted-entry-id` (`XSETID`), which trimming alone leaves at `0-0`: `OPEN` reads it to
/// tell a resume point that is gone. Returns how many were appended, or -1 when fenced off.
const APPEND: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
local keep = tonumber(ARGV[2])
local i = 4
local added = 0
local newest = false
while i <= #ARGV do
  local n = tonumber(ARGV[i + 1])
  local entry = {KEYS[1], ARGV[i]}
  for j = 1, 2 * n do entry[#entry + 1] = ARGV[i + 1 + j] end
  local ok = redis.pcall('XADD', unpack(entry))
  if type(ok) ~= 'table' or not ok.err then
    added = added + 1
    newest = ARGV[i]
  end
  i = i + 2 + 2 * n
end
local length = redis.call('XLEN', KEYS[1])
if newest and length > keep + 64 then
  local gone = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', length - keep)
  local last_gone = gone[#gone][1]
  local first_kept = redis.call('XRANGE', KEYS[1], '(' .. last_gone, '+', 'COUNT', 1)[1][1]
  redis.call('XTRIM', KEYS[1], 'MINID', first_kept)
  redis.call('XSETID', KEYS[1], newest, 'MAXDELETEDID', last_gone)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return added
";

/// What a follower starting after an entry needs, at one moment. KEYS: stream, floor. ARGV:
/// the entry, COUNT, the follower's event id, the floor's TTL ms, `1` when the route is
/// numbered by the BFF. Returns the newest entry trimmed away (`0-0`: none) and the entries
/// after the given one. For a route numbered by the BFF it raises the `floor` to the follower's
/// event id: a holder starting over numbers its events above every id a follower has.
const OPEN: &str = r"
if ARGV[5] == '1' and ARGV[3] ~= '0' then
  local floor = redis.call('GET', KEYS[2])
  if not floor or tonumber(floor) < tonumber(ARGV[3]) then floor = ARGV[3] end
  redis.call('SET', KEYS[2], floor, 'PX', ARGV[4])
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'0-0', {}} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local trimmed = '0-0'
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then trimmed = info[i + 1] end
end
return {trimmed, redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])}
";

impl Scripts {
    pub fn new() -> Self {
        Self {
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            append: Script::new(APPEND),
            open: Script::new(OPEN),
        }
    }
}
