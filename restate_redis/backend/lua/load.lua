-- load.lua: write one object or workflow whole, for an import: its state exactly as given,
-- its version, workflow status, time of the last change and expiries, atomically and fenced
-- by the object's lease (a session holding it is never interleaved with: the import waits for
-- it). Idempotent: an object that already holds the same version, workflow status and state
-- bytes is left as it is ("unchanged", no write), so running an import again changes nothing.
-- Which key and reserved field holds what is described in keyspace.py.
--
-- An object written here starts afresh: its state hash (bookkeeping and prior values
-- included), old and ttls are replaced (recent commit ids stay, so a commit retried from
-- before is still recognised); the bookkeeping gets the stored size (b) counted here, and a
-- new last commit (c, from ARGV[4]), so that a snapshot a store cached of the object before
-- can never match it again.
--
-- KEYS[1] state  KEYS[2] lease  KEYS[3] wait  KEYS[4] wake  KEYS[5] commits  KEYS[6] old
-- KEYS[7] ttls  KEYS[8] meta, KEYS[9] prev: keyspace version 1's (moved in first: meta.lua)
-- KEYS[10] history (only with ARGV[10])
-- ARGV[1] token        "" takes the lease for the length of this script when no one holds
--                      it (BUSY otherwise); else the caller's session holds it with this token
-- ARGV[2] on conflict  "skip" | "overwrite" | "fail": for an object the target holds otherwise
-- ARGV[3] dry run      "1": only say what would be done; nothing is written
-- ARGV[4] commit id    unique: the new last commit (c)
-- ARGV[5] version
-- ARGV[6] workflow     "" | "running" | "completed"
-- ARGV[7] ttl ms       > 0: every key of the object expires after this long; -1: never
-- ARGV[8] changed ms   "" or when the state last changed (t, kept to the second); "" takes
--                      the server's time
-- ARGV[9] grace ms     an object with no state keeps its bookkeeping this long
-- ARGV[10] history     "" or commit.lua's ARGV[9]: an entry of origin "import" in the
--                      object's history (history.lua; KEYS[10] the history stream)
-- ARGV[11] n           state keys, which follow as n name, value pairs
-- ARGV[12+2n] t        state keys with an expiry of their own, which follow as t name, ms pairs
-- then h               history entries the record carries, which follow as h times: stream
--                      id, field count f, f field, value pairs; h > 0 replaces the object's
--                      history with them (and ARGV[10] is not used)
--
-- Reply: {1, outcome, version}  outcome "created" | "overwritten" | "unchanged" | "skipped" |
--                               "conflict" (on conflict "fail": nothing written); version: the
--                               object's version afterwards (what it holds, unless written)
--        {0, lease pttl}        another session holds the lease (nothing written)
--        {-3}                   the lease is not held by token
--        {-1, type, key}        a key of the wrong type
--        {-4, field, value}     bookkeeping that does not parse
--        {-5, server, error}    a state key's expiry on a server without hash-field expiry
--#include expiry.lua

--#include meta.lua
--#include history.lua

local state, lease, wait, wake = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local commits, old, ttls = KEYS[5], KEYS[6], KEYS[7]
local token, on_conflict, dry = ARGV[1], ARGV[2], ARGV[3] == '1'
local commit_id, version, wf = ARGV[4], ARGV[5], ARGV[6]
local ttl_ms, changed, grace_ms = tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
local n = tonumber(ARGV[11])
local first_ttl = 13 + 2 * n
local last_ttl = first_ttl - 1 + 2 * tonumber(ARGV[12 + 2 * n])
local rows = tonumber(ARGV[last_ttl + 1])  -- history entries the record carries

for _, e in ipairs({{state, 'hash'}, {lease, 'string'}, {wait, 'string'}, {wake, 'list'},
    {commits, 'zset'}, {old, 'hash'}, {ttls, 'zset'}}) do
  local t = redis.call('TYPE', e[1])['ok']
  if t ~= e[2] and t ~= 'none' then return {-1, t, e[1]} end
end
if tonumber(ARGV[12 + 2 * n]) > 0 then
  local refused = field_expiry_refused(state)
  if refused then return {-5, server_name(), refused} end
end
local m, bad = read_meta(state, KEYS[8], KEYS[9])
if not m then return bad end

-- What the target holds: an object exists when it has state, or is a workflow
local held_n = user_fields(state, m)
local held_wf = workflow_status(m)
local exists = held_n > 0 or held_wf ~= ''
local outcome = 'created'
if exists then
  local same = held_n == n and m.v == tonumber(version) and held_wf == wf
  if same then
    for i = 12, 11 + 2 * n, 2 do
      if redis.call('HGET', state, ARGV[i]) ~= ARGV[i + 1] then
        same = false
        break
      end
    end
  end
  if same then
    outcome = 'unchanged'
  elseif on_conflict == 'skip' then
    outcome = 'skipped'
  elseif on_conflict == 'fail' then
    outcome = 'conflict'
  else
    outcome = 'overwritten'
  end
end
if outcome ~= 'created' and outcome ~= 'overwritten' then
  return {1, outcome, m.v}
end
if dry then return {1, outcome, tonumber(version)} end

local holder = redis.call('GET', lease)
if token == '' then
  if holder then return {0, redis.call('PTTL', lease)} end
elseif holder ~= token then
  return {-3}
end

-- The history entry: a clear_all and the record's keys set (every prior key and value)
local hist, refused
if rows > 0 then
  local t = redis.call('TYPE', KEYS[10])['ok']
  if t ~= 'stream' and t ~= 'none' then return {-1, t, KEYS[10]} end
else
  hist, refused = history_begin(ARGV[10], KEYS[10], state, true, 12, 11, 12, 11 + 2 * n)
  if refused then return refused end
end

-- The writes: the object replaced whole
redis.call('UNLINK', state, old, ttls)
local size = 0
local batch = {}
for i = 12, 11 + 2 * n, 2 do
  size = size + #ARGV[i] + #ARGV[i + 1]
  batch[#batch + 1] = ARGV[i]
  batch[#batch + 1] = ARGV[i + 1]
  if #batch >= 200 then
    redis.call('HSET', state, unpack(batch))
    batch = {}
  end
end
if #batch > 0 then redis.call('HSET', state, unpack(batch)) end
local last_expiry
for i = first_ttl, last_ttl, 2 do
  local f = ARGV[i]
  local at = now_ms() + tonumber(ARGV[i + 1])
  redis.call('HPEXPIREAT', state, string.format('%.0f', at), 'FIELDS', 1, f)
  redis.call('ZADD', ttls, string.format('%.0f', at), ttl_member(f, redis.call('HSTRLEN', state, f)))
  if not last_expiry or at > last_expiry then last_expiry = at end
end

local meta = {v = tonumber(version), b = size, c = commit_tag(commit_id),
              t = math.floor((changed ~= '' and tonumber(changed) or now_ms()) / 1000), f = ''}
if wf == 'running' then meta.f = 'R' elseif wf == 'completed' then meta.f = 'C' end
-- With the record's history, the last commit is its newest entry's when that entry made this
-- version (the same state, so a snapshot cached of it is still right), and a restore can
-- follow the entries back from it.
if rows > 0 then
  local at, last = last_ttl + 2, nil
  for _ = 1, rows do
    local nf = tonumber(ARGV[at + 1])
    last = {first = at + 2, count = nf}
    at = at + 2 + 2 * nf
  end
  local v, c
  for i = last.first, last.first + 2 * last.count - 1, 2 do
    if ARGV[i] == 'v' then v = ARGV[i + 1] elseif ARGV[i] == 'c' then c = ARGV[i + 1] end
  end
  if v and c and tonumber(v) == meta.v then meta.c = commit_tag(c) end
end

-- The expiries, as a commit sets them (commit.lua)
local timed_all = last_expiry and (last_ttl - first_ttl + 1) / 2 == n
if ttl_ms > 0 then
  write_meta(state, meta)
  redis.call('PEXPIRE', state, ttl_ms)
  redis.call('PEXPIRE', ttls, ttl_ms)
elseif n == 0 and wf == '' then
  set_flag(meta, 'e', true)
  write_meta(state, meta)
  redis.call('PEXPIRE', state, grace_ms)
elseif timed_all and wf == '' then
  local at = string.format('%.0f', last_expiry + grace_ms)
  set_flag(meta, 'e', true)
  write_meta(state, meta)
  redis.call('PEXPIREAT', state, at)
  redis.call('PEXPIREAT', ttls, at)
else
  write_meta(state, meta)
end
if rows > 0 then
  -- the record's history replaces the object's, ids and all (no entry of the import's own)
  redis.call('DEL', KEYS[10])
  local at = last_ttl + 2
  for _ = 1, rows do
    local id, nf = ARGV[at], tonumber(ARGV[at + 1])
    redis.call('XADD', KEYS[10], id, unpack(ARGV, at + 2, at + 1 + 2 * nf))
    at = at + 2 + 2 * nf
  end
  hist = {key = KEYS[10]}
else
  history_add(hist, meta.v, commit_id, false, m.v)
end
history_expire(hist, state)
return {1, outcome, tonumber(version)}
