// asnotes: text notes in bucket "notes", written in AssemblyScript with the
// SDK in abi/guest/assemblyscript; built by plugins/assemblyscript/build.py.
//
// Every export is an entry point `() -> i32`: 0 on success, a negative kv
// status when a store call fails, or a plugin status: 1 no such note (`get`,
// `expire`), 2 malformed input. An <id> is non-empty UTF-8 without a space; a
// note is stored under `note:<id>`, its text as the bytes after the first space.
//
//   add     `<id> <text>`: stores the note (compare_and_swap if absent, else
//           set); outputs `added` or `replaced`, and logs it at info level
//   get     `<id>`: outputs the text
//   has     `<id>`: outputs `1` if the note exists, else `0` (exists)
//   remove  `<id>`: deletes it; outputs `1` if it existed, else `0` (delete)
//   expire  `<id> <ttl_ms>`: rewrites the note to expire (get, set_with_ttl)
//   list    empty, `<from>` or `<from> <to>`: one line `<id> <text>\n` per
//           note with from <= id < to, in key order (scan, 2 pairs a page)
//   rlist   as `list`, in reverse key order (reverse scan)
//   ids     one line `<id>\n` per note, in key order (list_keys, 2 keys a page)
//   show    `<id> <id> ...`: one line per id, `<id> <text>\n`, or `<id>\n`
//           when there is no such note (get_many)
//   bulk    lines `<id> <text>`: stores them all or none (set_many); outputs how many
//   purge   `<id> <id> ...`: deletes them (delete_many); outputs how many existed
//   count   empty or a signed decimal delta: adds it (default 1) to the
//           counter under key `count` (increment); outputs the new value
//   fail    aborts with "boom" (a `throw`, through `env.abort`): the call traps

import * as kv from "../../abi/guest/assemblyscript/wasmkv";

/** `get`, `expire`: no such note. */
const MISSING: i32 = 1;
/** Malformed input. */
const MALFORMED: i32 = 2;

const BUCKET = "notes";
/** Notes live under `note:<id>`; the counter of `count` under `count`. */
const PREFIX = "note:";
const COUNTER = "count";
/** Small, so that listings span several pages. */
const PAGE: i32 = 2;

const SPACE: u8 = 0x20;
const NEWLINE: u8 = 0x0a;

// ---- entry points ----

/** `<id> <text>`: stores the note; outputs `added`, or `replaced` if the id had one. */
export function add(): i32 {
  const input = kv.input();
  const space = input.indexOf(SPACE);
  if (space <= 0) return MALFORMED;
  const id = kv.text(input.subarray(0, space));
  const note = input.slice(space + 1);
  const bucket = kv.Bucket.open(BUCKET);
  // Create it only if absent; otherwise replace it.
  let verb = "added";
  if (!bucket.compareAndSwap(PREFIX + id, null, note)) {
    if (kv.failed()) return kv.lastStatus();
    if (!bucket.set(PREFIX + id, note)) return kv.lastStatus();
    verb = "replaced";
  }
  kv.log(kv.LogLevel.INFO, "asnotes: " + verb + " " + id);
  kv.outputString(verb);
  return kv.lastStatus();
}

/** `<id>`: outputs the note's text. */
export function get(): i32 {
  const id = oneId();
  if (id === null) return MALFORMED;
  const note = kv.Bucket.open(BUCKET).get(PREFIX + id);
  if (kv.failed()) return kv.lastStatus();
  if (note === null) return MISSING;
  kv.output(note);
  return kv.lastStatus();
}

/** `<id>`: outputs `1` if the note exists, else `0`. */
export function has(): i32 {
  const id = oneId();
  if (id === null) return MALFORMED;
  const found = kv.Bucket.open(BUCKET).exists(PREFIX + id);
  if (kv.failed()) return kv.lastStatus();
  kv.outputString(found ? "1" : "0");
  return kv.lastStatus();
}

/** `<id>`: deletes the note; outputs `1` if it existed, else `0`. */
export function remove(): i32 {
  const id = oneId();
  if (id === null) return MALFORMED;
  const existed = kv.Bucket.open(BUCKET).delete(PREFIX + id);
  if (kv.failed()) return kv.lastStatus();
  kv.outputString(existed ? "1" : "0");
  return kv.lastStatus();
}

/** `<id> <ttl_ms>`: rewrites the note to expire after ttl_ms. */
export function expire(): i32 {
  const words = kv.inputString().split(" ");
  if (words.length != 2 || words[0].length == 0 || !parseI64(words[1], false) || parsed <= 0) return MALFORMED;
  const ttl = parsed;
  const bucket = kv.Bucket.open(BUCKET);
  const note = bucket.get(PREFIX + words[0]);
  if (kv.failed()) return kv.lastStatus();
  if (note === null) return MISSING;
  bucket.setWithTtl(PREFIX + words[0], note, ttl);
  return kv.lastStatus();
}

/** Empty, `<from>` or `<from> <to>`: one line `<id> <text>\n` per note, ids in [from, to), in key order. */
export function list(): i32 {
  return listNotes(false);
}

/** As `list`, in reverse key order. */
export function rlist(): i32 {
  return listNotes(true);
}

/** Empty: one line `<id>\n` per note, in key order (list_keys). */
export function ids(): i32 {
  const pages = kv.Bucket.open(BUCKET).listKeys(PREFIX, PAGE);
  while (pages.next()) {
    for (let i = 0; i < pages.keys.length; i++) {
      if (!kv.outputString(pages.keys[i].substring(PREFIX.length) + "\n")) return kv.lastStatus();
    }
  }
  return kv.lastStatus();
}

/** `<id> <id> ...`: one line per id, `<id> <text>\n`, or `<id>\n` when it has no note (get_many). */
export function show(): i32 {
  const ids = idList();
  if (ids === null) return MALFORMED;
  const keys = new Array<string>(ids.length);
  for (let i = 0; i < ids.length; i++) keys[i] = PREFIX + ids[i];
  const notes = kv.Bucket.open(BUCKET).getMany(keys);
  if (notes === null) return kv.lastStatus();
  for (let i = 0; i < ids.length; i++) {
    if (!emit(ids[i], notes[i])) return kv.lastStatus();
  }
  return kv.lastStatus();
}

/** Lines `<id> <text>`: stores every note or none (set_many); outputs how many. */
export function bulk(): i32 {
  const input = kv.input();
  const entries = new Array<kv.Entry>();
  let at = 0;
  while (at < input.length) {
    let end = input.indexOf(NEWLINE, at);
    if (end < 0) end = input.length;
    const line = input.subarray(at, end);
    const space = line.indexOf(SPACE);
    if (space <= 0) return MALFORMED;
    entries.push(new kv.Entry(PREFIX + kv.text(line.subarray(0, space)), line.slice(space + 1)));
    at = end + 1;
  }
  if (entries.length > 0 && !kv.Bucket.open(BUCKET).setMany(entries)) return kv.lastStatus();
  kv.outputString(entries.length.toString());
  return kv.lastStatus();
}

/** `<id> <id> ...`: deletes those notes (delete_many); outputs how many existed. */
export function purge(): i32 {
  const ids = idList();
  if (ids === null) return MALFORMED;
  const keys = new Array<string>(ids.length);
  for (let i = 0; i < ids.length; i++) keys[i] = PREFIX + ids[i];
  const existed = kv.Bucket.open(BUCKET).deleteMany(keys);
  if (kv.failed()) return kv.lastStatus();
  kv.outputString(existed.toString());
  return kv.lastStatus();
}

/** Empty or a signed `<delta>`: adds it (default 1) to the counter; outputs the new value (`0` reads it). */
export function count(): i32 {
  const input = kv.inputString();
  let delta: i64 = 1;
  if (input.length > 0) {
    if (!parseI64(input, true)) return MALFORMED;
    delta = parsed;
  }
  const value = kv.Bucket.open(BUCKET).increment(COUNTER, delta);
  if (kv.failed()) return kv.lastStatus();
  kv.outputString(value.toString());
  return kv.lastStatus();
}

/** Aborts with "boom" (AssemblyScript's `env.abort`): the host reports it as a trap. */
export function fail(): i32 {
  throw new Error("boom");
}

// ---- helpers ----

function listNotes(reverse: bool): i32 {
  const words = kv.inputString().split(" ");
  if (words.length > 2) return MALFORMED;
  let start: string | null = null;
  let end: string | null = null;
  if (words[0].length > 0) start = PREFIX + words[0];
  if (words.length == 2) {
    if (words[0].length == 0 || words[1].length == 0) return MALFORMED;
    end = PREFIX + words[1];
  }
  const scan = kv.Bucket.open(BUCKET).scan(PREFIX, start, end, reverse, PAGE);
  while (scan.next()) {
    for (let i = 0; i < scan.items.length; i++) {
      const item = scan.items[i];
      if (!emit(item.key.substring(PREFIX.length), item.value)) return kv.lastStatus();
    }
  }
  return kv.lastStatus();
}

/** Outputs `<id> <text>\n`, or `<id>\n` without a text. Whether the host took it. */
function emit(id: string, note: Uint8Array | null): bool {
  if (note === null) return kv.outputString(id + "\n");
  const head = kv.utf8(id + " ");
  const text: Uint8Array = note;
  const line = new Uint8Array(head.length + text.length + 1);
  line.set(head);
  line.set(text, head.length);
  line[line.length - 1] = NEWLINE;
  return kv.output(line);
}

/** The input as one id: non-empty, without a space; else null. */
function oneId(): string | null {
  const id = kv.inputString();
  return id.length == 0 || id.includes(" ") ? null : id;
}

/** The input as ids separated by single spaces; null if there are none or one is empty. */
function idList(): string[] | null {
  const input = kv.inputString();
  if (input.length == 0) return null;
  const ids = input.split(" ");
  for (let i = 0; i < ids.length; i++) {
    if (ids[i].length == 0) return null;
  }
  return ids;
}

/** The value `parseI64` read. */
let parsed: i64 = 0;

/** Decimal digits (a leading `-` if `signed`) within the i64 range into `parsed`; false if not. */
function parseI64(s: string, signed: bool): bool {
  const negative = signed && s.startsWith("-");
  const digits = negative ? s.substring(1) : s;
  if (digits.length == 0 || digits.length > 19) return false;
  // Accumulate downwards: i64's range reaches one further below zero than above.
  let n: i64 = 0;
  for (let i = 0; i < digits.length; i++) {
    const c = digits.charCodeAt(i);
    if (c < 0x30 || c > 0x39) return false;
    const d = <i64>(c - 0x30);
    if (n < (i64.MIN_VALUE + d) / 10) return false;
    n = n * 10 - d;
  }
  if (!negative) {
    if (n == i64.MIN_VALUE) return false;
    n = -n;
  }
  parsed = n;
  return true;
}
