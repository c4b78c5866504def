// The Lua scripts behind every write and admission of the Redis store. Per counter and window:
//
//   …:c   consumed total (string, integer)
//   …:r   holders hash: one field per process, "<seq>:<consumed>:<reserved>:<lease expiry ms>", and
//         `_c_from_holders` once a write made the total from the holders then present (its first write of the
//         window, or a rebuild after the total was lost), and `_floor`, the largest total a process had seen
//         before a loss left Redis with less (consumption never shrinks in a window: decisions and replies use
//         the larger of the two until the processes' rewrites bring the total back past it)
//
// A process writes its own absolute state (consumed and reserved in the window) with a sequence number;
// the script applies it only when the sequence is newer than the stored one, adds the growth of the
// process's consumed to the total, and sums the reservations of the other processes whose lease has not
// expired, judged by Redis's own TIME. A write is therefore idempotent: re-sending after a timeout counts
// nothing twice, and a reservation whose owner died stops counting when its lease ends.
import { createHash } from 'node:crypto';

const PARSE = `
local function parse(v)
  local s, c, r, e = string.match(v, '^(%d+):(%d+):(%d+):(%d+)$')
  if s == nil then return 0, 0, 0, 0 end
  return tonumber(s), tonumber(c), tonumber(r), tonumber(e)
end
local function nowMs()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The consumed total, or false when the key is absent (evicted, flushed, lost in a restart).
local function total(key)
  local v = redis.call('GET', key)
  if not v then return false end
  local n = tonumber(v)
  if n == nil or n ~= math.floor(n) then return redis.error_reply('ERR sluice: consumed total is not an integer') end
  return n
end
-- One pass over a holders hash: the field 'id' (seq, consumed, reserved; seq -1 when absent), the sum of the
-- other fields' live reservations, the sum of their consumed, whether the total was made from the holders, and
-- the floor a process set after a loss (0 when none).
-- 'clean' zeroes the reservation of expired fields (their consumed stays: it keeps a late write of that process
-- idempotent).
local function scan(key, id, now, clean)
  local oseq, oc, orr, sum, sumC, made, floor = -1, 0, 0, 0, 0, false, 0
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    if all[i] == '_c_from_holders' then made = true
    elseif all[i] == '_floor' then floor = tonumber(all[i + 1]) or 0
    else
      local s, c, r, e = parse(all[i + 1])
      if all[i] == id then oseq, oc, orr = s, c, r
      else
        sumC = sumC + c
        if r > 0 then
          if e > now then sum = sum + r
          elseif clean then redis.call('HSET', key, all[i], string.format('%d:%d:0:0', s, c)) end
        end
      end
    end
  end
  return oseq, oc, orr, sum, sumC, made, floor
end
`;

/**
 * KEYS: c, r of the window [, c, r of the previous window (sliding admission)].
 * ARGV: field (process), seq, own consumed, own reserved, lease ms, ttl s, amount to admit (0: plain write),
 *       limit, weight of the previous window, own consumed Redis last acknowledged, the largest consumed total
 *       this process has seen in the window and in the previous one (floors: see the key layout above).
 * A lost key is recovered from the other: a total that is not there is made from the holders' consumed (and the
 * hash marked `_c_from_holders`: a holder written later is not in it); a holders hash that is gone while the
 * total stayed makes each process add only its growth since its last acknowledged write (without that, every
 * process's consumed was counted twice).
 * Returns [consumed total, others' live reserved, stored seq, stored own consumed, stored own reserved,
 *          admitted (1 yes, 0 no, 2 not decided), previous consumed total, previous live reserved (all processes)].
 * Admission: the amount is added to this process's reservation iff consumed + every live reservation
 * (+ the weighted previous window) is below the limit, so Redis serialises the decisions. A write whose
 * sequence is not newer than the stored one (it arrived after a later write of the process, e.g. an EVALSHA
 * answered NOSCRIPT and sent again as EVAL) is not applied and decides nothing: admitted 2.
 */
export const WRITE_SCRIPT = `${PARSE}
local id, seq = ARGV[1], tonumber(ARGV[2])
local ownC, ownR = tonumber(ARGV[3]), tonumber(ARGV[4])
local lease, ttl, amount = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local acked = tonumber(ARGV[10] or '0')
local floor, pfloor = tonumber(ARGV[11] or '0') or 0, tonumber(ARGV[12] or '0') or 0
local now = nowMs()
local oseq, oc, orr, rest, othersC, made, sfloor = scan(KEYS[2], id, now, true)
local pc, pr = 0, 0
if KEYS[3] then
  local _, _, _, all, allC, _, spf = scan(KEYS[4], '', now, false)
  pc = total(KEYS[3])
  if type(pc) == 'table' then return pc end
  if pc == false then pc = allC end
  if spf > pc then pc = spf end
  if pfloor > pc then pc = pfloor end
  pr = all
end
local c = total(KEYS[1])
if type(c) == 'table' then return c end
local admitted = 0
if seq > oseq then
  if ownC < oc then ownC = oc end
  if c == false then
    -- No total (the window's first write, or it was lost: evicted, flushed, a restart): made from the holders,
    -- this process at its new state, with the window's TTL. The mark says holders written later are not in it.
    c = othersC + ownC
    if c > 0 then redis.call('SET', KEYS[1], c, 'EX', ttl) end
    redis.call('HSET', KEYS[2], '_c_from_holders', '1')
  else
    -- A process Redis has no field for adds its whole consumed, unless the field was lost while the total
    -- was kept (the holders hash evicted): then what Redis acknowledged before is in the total already.
    local base = oc
    if oseq < 0 and not made and acked > 0 then base = math.min(acked, ownC) end
    if ownC > base then c = redis.call('INCRBY', KEYS[1], ownC - base) end
  end
elseif c == false then
  c = othersC + oc
end
-- A total below what a process saw before (a flush, a restart without persistence, an eviction) is lost usage,
-- not usage that never was: it counts as the floor until the rewrites bring it back.
if sfloor > c then c = sfloor end
if floor > c then
  c = floor
  if seq > oseq then
    redis.call('HSET', KEYS[2], '_floor', floor)
    redis.call('EXPIRE', KEYS[2], ttl, 'NX')
  end
end
if seq > oseq then
  if amount > 0 and c + rest + ownR + (pc + pr) * tonumber(ARGV[9]) < tonumber(ARGV[8]) then
    ownR = ownR + amount
    admitted = 1
  end
  if ownR > 0 then
    redis.call('HSET', KEYS[2], id, string.format('%d:%d:%d:%d', seq, ownC, ownR, now + lease))
  else
    redis.call('HSET', KEYS[2], id, string.format('%d:%d:0:0', seq, ownC))
  end
  if oseq < 0 then redis.call('EXPIRE', KEYS[2], ttl, 'NX') end
  oseq, oc, orr = seq, ownC, ownR
elseif amount > 0 then
  admitted = 2
end
return {c, rest, oseq, oc, orr, admitted, pc, pr}
`;

/** Read-only refresh (may run on a replica). KEYS: c, r. ARGV: field, the largest total this process has seen in
 *  the window (a floor it does not store). Same reply layout as WRITE_SCRIPT. */
export const READ_SCRIPT = `#!lua flags=no-writes
${PARSE}
local now = nowMs()
local c = total(KEYS[1])
if type(c) == 'table' then return c end
local oseq, oc, orr, rest, othersC, _, sfloor = scan(KEYS[2], ARGV[1], now, false)
if c == false then c = othersC + oc end
if sfloor > c then c = sfloor end
local floor = tonumber(ARGV[2] or '0') or 0
if floor > c then c = floor end
return {c, rest, oseq, oc, orr, 0, 0, 0}
`;

export function sha1(text: string): string {
  return createHash('sha1').update(text).digest('hex');
}

export const WRITE_SHA = sha1(WRITE_SCRIPT);
export const READ_SHA = sha1(READ_SCRIPT);
/** Script bodies by SHA, for the EVAL fallback when a node answers NOSCRIPT (restart, failover). */
export const SCRIPTS: ReadonlyMap<string, string> = new Map([[WRITE_SHA, WRITE_SCRIPT], [READ_SHA, READ_SCRIPT]]);
