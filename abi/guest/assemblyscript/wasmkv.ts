// wasmkv.ts: AssemblyScript SDK for wasmkv plugins. The contract is abi/ABI.md;
// README.md next to this file shows how to build a plugin with it.
//
//   import * as kv from "<path to>/abi/guest/assemblyscript/wasmkv";
//
// Errors: AssemblyScript has no exceptions a plugin can catch, so every call
// that reaches the host (all but `log`) records its status, read with
// `lastStatus()` (0, or a negative status code of the ABI) and `failed()`. A
// failed call returns a neutral value: null, false, 0 or an empty result. A
// missing key is not a failure: `get` returns null and the status is OK. An
// entry point returns the status it cannot handle:
// `if (kv.failed()) return kv.lastStatus();`.
//
// Variable-size results follow the ABI's buffer rule: the SDK calls again with
// a buffer of the reported length until the result fits. A malformed msgpack
// reply is a host bug and traps (`unreachable`).

// ---- imports (abi/__init__.py: KV_IMPORTS, HOST_IMPORTS) ----

@external("kv", "open")
declare function kv_open(name_ptr: i32, name_len: i32): i32;
@external("kv", "get")
declare function kv_get(store: i32, key_ptr: i32, key_len: i32, out_ptr: i32, out_cap: i32): i32;
@external("kv", "set")
declare function kv_set(store: i32, key_ptr: i32, key_len: i32, val_ptr: i32, val_len: i32): i32;
@external("kv", "set_with_ttl")
declare function kv_set_with_ttl(store: i32, key_ptr: i32, key_len: i32, val_ptr: i32, val_len: i32, ttl_ms: i64): i32;
@external("kv", "delete")
declare function kv_delete(store: i32, key_ptr: i32, key_len: i32): i32;
@external("kv", "exists")
declare function kv_exists(store: i32, key_ptr: i32, key_len: i32): i32;
@external("kv", "increment")
declare function kv_increment(store: i32, key_ptr: i32, key_len: i32, delta: i64, out_ptr: i32): i32;
@external("kv", "compare_and_swap")
declare function kv_compare_and_swap(
  store: i32, key_ptr: i32, key_len: i32, exp_ptr: i32, exp_len: i32, new_ptr: i32, new_len: i32,
): i32;
@external("kv", "list_keys")
declare function kv_list_keys(
  store: i32, prefix_ptr: i32, prefix_len: i32, cursor_ptr: i32, cursor_len: i32, limit: i32,
  out_ptr: i32, out_cap: i32,
): i32;
@external("kv", "scan")
declare function kv_scan(store: i32, req_ptr: i32, req_len: i32, out_ptr: i32, out_cap: i32): i32;
@external("kv", "get_many")
declare function kv_get_many(store: i32, req_ptr: i32, req_len: i32, out_ptr: i32, out_cap: i32): i32;
@external("kv", "set_many")
declare function kv_set_many(store: i32, req_ptr: i32, req_len: i32, out_ptr: i32, out_cap: i32): i32;
@external("kv", "delete_many")
declare function kv_delete_many(store: i32, req_ptr: i32, req_len: i32, out_ptr: i32, out_cap: i32): i32;
@external("host", "input")
declare function host_input(out_ptr: i32, out_cap: i32): i32;
@external("host", "output")
declare function host_output(ptr: i32, len: i32): i32;
@external("host", "log")
declare function host_log(level: i32, ptr: i32, len: i32): void;

// ---- statuses and limits (abi/__init__.py: Status, LIST_MAX_LIMIT, BATCH_MAX_ITEMS) ----

/** The ABI's status codes. Plugins may return their own positive statuses too. */
export enum Status {
  OK = 0,
  NOT_FOUND = -1,
  INVALID_KEY = -2,
  VALUE_TOO_LARGE = -3,
  QUOTA_EXCEEDED = -4,
  NOT_A_NUMBER = -5,
  INTEGER_OVERFLOW = -6,
  ACCESS_DENIED = -7,
  BAD_HANDLE = -8,
  BAD_POINTER = -9,
  RATE_LIMITED = -10,
  BACKEND_UNAVAILABLE = -11,
  INVALID_ARGUMENT = -12,
}

/** The most keys one `listKeys` page, or one batch request, may carry. */
export const LIST_MAX_LIMIT: i32 = 1000;
export const BATCH_MAX_ITEMS: i32 = 1000;

/** Levels accepted by `log`. */
export enum LogLevel {
  DEBUG = 0,
  INFO = 1,
  WARNING = 2,
  ERROR = 3,
}

/** The ABI's name of a status ("QUOTA_EXCEEDED" for -4), or its number for a plugin's own. */
export function statusName(status: i32): string {
  switch (status) {
    case Status.OK: return "OK";
    case Status.NOT_FOUND: return "NOT_FOUND";
    case Status.INVALID_KEY: return "INVALID_KEY";
    case Status.VALUE_TOO_LARGE: return "VALUE_TOO_LARGE";
    case Status.QUOTA_EXCEEDED: return "QUOTA_EXCEEDED";
    case Status.NOT_A_NUMBER: return "NOT_A_NUMBER";
    case Status.INTEGER_OVERFLOW: return "INTEGER_OVERFLOW";
    case Status.ACCESS_DENIED: return "ACCESS_DENIED";
    case Status.BAD_HANDLE: return "BAD_HANDLE";
    case Status.BAD_POINTER: return "BAD_POINTER";
    case Status.RATE_LIMITED: return "RATE_LIMITED";
    case Status.BACKEND_UNAVAILABLE: return "BACKEND_UNAVAILABLE";
    case Status.INVALID_ARGUMENT: return "INVALID_ARGUMENT";
  }
  return status.toString();
}

// ---- the status model ----

let status_: i32 = Status.OK;

/** The status of the last SDK call that reached the host: OK (0) or a negative status code. */
export function lastStatus(): i32 {
  return status_;
}

/** Whether the last SDK call that reached the host failed (`lastStatus() < 0`). */
export function failed(): bool {
  return status_ < 0;
}

/** Records an import's result and returns it: statuses below 0 are failures, the rest are OK. */
function record(rc: i32): i32 {
  status_ = rc < 0 ? rc : Status.OK;
  return rc;
}

// ---- byte helpers ----

/** The UTF-8 bytes of `s` (a lone surrogate stays as WTF-8, which the store rejects as a key). */
export function utf8(s: string): Uint8Array {
  return Uint8Array.wrap(String.UTF8.encode(s));
}

/** `bytes` decoded as UTF-8. */
export function text(bytes: Uint8Array): string {
  return String.UTF8.decodeUnsafe(bytes.dataStart, <usize>bytes.length);
}

// Raw addresses are taken only in the import call's own argument list, with the
// array still referenced by a local or parameter, so the collector (which runs
// only when allocating, and never moves objects) cannot free it in between.
@inline function ptr(bytes: Uint8Array): i32 {
  return <i32>bytes.dataStart;
}

/** Scratch for `increment`'s 8-byte result. */
const INCREMENT_OUT: usize = memory.data(8, 8);

// ---- the buffer rule ----

// The imports that follow the buffer rule, for `fetch`.
const GET: i32 = 0;
const INPUT: i32 = 1;
const LIST_KEYS: i32 = 2;
const SCAN: i32 = 3;
const GET_MANY: i32 = 4;

/** First buffer size for values, inputs and batch replies. */
const DEFAULT_HINT: i32 = 256;

function fill(op: i32, store: i32, a: Uint8Array, b: Uint8Array | null, limit: i32, out: Uint8Array): i32 {
  switch (op) {
    case GET: return kv_get(store, ptr(a), a.length, ptr(out), out.length);
    case INPUT: return host_input(ptr(out), out.length);
    case LIST_KEYS: {
      // b is the cursor; empty starts the listing.
      const cursor = b === null ? new Uint8Array(0) : b;
      return kv_list_keys(store, ptr(a), a.length, ptr(cursor), cursor.length, limit, ptr(out), out.length);
    }
    case SCAN: return kv_scan(store, ptr(a), a.length, ptr(out), out.length);
    case GET_MANY: return kv_get_many(store, ptr(a), a.length, ptr(out), out.length);
  }
  unreachable();
  return 0;
}

/**
 * One buffer-rule import, called until its result fits: first into `hint`
 * bytes, then into the length the previous call reported (the data may change
 * between calls). Exactly the result, or null with the status recorded.
 */
function fetch(op: i32, store: i32, a: Uint8Array, b: Uint8Array | null, limit: i32, hint: i32): Uint8Array | null {
  let buf = new Uint8Array(hint);
  while (true) {
    const len = record(fill(op, store, a, b, limit, buf));
    if (len < 0) return null;
    if (len <= buf.length) return len == buf.length ? buf : buf.slice(0, len);
    buf = new Uint8Array(len);
  }
  return null;
}

// ---- host: input, output, log ----

/** The call's input. */
export function input(): Uint8Array {
  const bytes = fetch(INPUT, 0, new Uint8Array(0), null, 0, DEFAULT_HINT);
  return bytes === null ? new Uint8Array(0) : bytes;
}

/** The call's input decoded as UTF-8. */
export function inputString(): string {
  return text(input());
}

/**
 * Appends to the call's output. False (with the status recorded) if the host
 * refused it: INVALID_ARGUMENT once one call's output would pass the plugin's
 * memory limit.
 */
export function output(data: Uint8Array): bool {
  return record(host_output(ptr(data), data.length)) >= 0;
}

/** Appends the UTF-8 bytes of `s` to the call's output (see `output`). */
export function outputString(s: string): bool {
  return output(utf8(s));
}

/** Logs `message` at `level` (LogLevel). Does not change `lastStatus()`. */
export function log(level: i32, message: string): void {
  const bytes = utf8(message);
  host_log(level, ptr(bytes), bytes.length);
}

// ---- the store ----

/** One entry of a `setMany` request. */
export class Entry {
  constructor(
    public key: string,
    public value: Uint8Array,
  ) {}
}

/** One key and its value, from a scan. */
export class Pair {
  constructor(
    public key: string,
    public value: Uint8Array,
  ) {}
}

/**
 * A bucket granted to this plugin. Every method records its status
 * (`lastStatus()`); on failure it returns null, false, 0 or an empty result.
 */
export class Bucket {
  /** The store handle, or the status `open` failed with (then every call fails with it). */
  readonly handle: i32;

  constructor(handle: i32) {
    this.handle = handle;
  }

  /**
   * Opens the bucket `name`. On failure (ACCESS_DENIED, INVALID_ARGUMENT) the
   * status is recorded and the bucket's calls all fail with that status without
   * reaching the host, so a plugin may check once, or at its first call.
   */
  static open(name: string): Bucket {
    const bytes = utf8(name);
    return new Bucket(record(kv_open(ptr(bytes), bytes.length)));
  }

  /** Whether `open` succeeded. */
  get ok(): bool {
    return this.handle >= 0;
  }

  /** False, recording the open's status, if the bucket did not open. */
  private usable(): bool {
    if (this.handle >= 0) return true;
    status_ = this.handle;
    return false;
  }

  /** The value, or null if the key is missing (status OK) or on failure. */
  get(key: string): Uint8Array | null {
    if (!this.usable()) return null;
    const value = fetch(GET, this.handle, utf8(key), null, 0, DEFAULT_HINT);
    if (status_ == Status.NOT_FOUND) status_ = Status.OK;
    return value;
  }

  /** The value decoded as UTF-8, or null if the key is missing or on failure. */
  getString(key: string): string | null {
    const value = this.get(key);
    return value === null ? null : text(value);
  }

  /** Whether it wrote. Clears the key's TTL. */
  set(key: string, value: Uint8Array): bool {
    if (!this.usable()) return false;
    const k = utf8(key);
    return record(kv_set(this.handle, ptr(k), k.length, ptr(value), value.length)) >= 0;
  }

  /** `set` of the UTF-8 bytes of `value`. */
  setString(key: string, value: string): bool {
    return this.set(key, utf8(value));
  }

  /** Whether it wrote; the key expires after `ttlMs` (1..3,153,600,000,000, else INVALID_ARGUMENT). */
  setWithTtl(key: string, value: Uint8Array, ttlMs: i64): bool {
    if (!this.usable()) return false;
    const k = utf8(key);
    return record(kv_set_with_ttl(this.handle, ptr(k), k.length, ptr(value), value.length, ttlMs)) >= 0;
  }

  /** Whether the key existed (false on failure too: check `failed()`). */
  delete(key: string): bool {
    if (!this.usable()) return false;
    const k = utf8(key);
    return record(kv_delete(this.handle, ptr(k), k.length)) == 1;
  }

  /** Whether the key exists (false on failure too: check `failed()`). */
  exists(key: string): bool {
    if (!this.usable()) return false;
    const k = utf8(key);
    return record(kv_exists(this.handle, ptr(k), k.length)) == 1;
  }

  /**
   * Adds `delta` (a missing key counts as 0) and returns the new value; 0 on
   * failure (NOT_A_NUMBER, INTEGER_OVERFLOW, ...: check `failed()`).
   */
  increment(key: string, delta: i64 = 1): i64 {
    if (!this.usable()) return 0;
    const k = utf8(key);
    if (record(kv_increment(this.handle, ptr(k), k.length, delta, <i32>INCREMENT_OUT)) < 0) return 0;
    return load<i64>(INCREMENT_OUT);
  }

  /**
   * Sets `key` to `value` if its value is `expected` (null: if it is absent).
   * Whether it swapped (false on a mismatch or on failure: check `failed()`).
   */
  compareAndSwap(key: string, expected: Uint8Array | null, value: Uint8Array): bool {
    if (!this.usable()) return false;
    const k = utf8(key);
    let expPtr: i32 = 0;
    let expLen: i32 = -1;
    if (expected !== null) {
      expPtr = ptr(expected);
      expLen = expected.length;
    }
    return record(kv_compare_and_swap(this.handle, ptr(k), k.length, expPtr, expLen, ptr(value), value.length)) == 1;
  }

  /**
   * Pages of the keys that start with `prefix`, in byte order, `limit`
   * (1..LIST_MAX_LIMIT) keys a page: `while (pages.next()) { ... pages.keys ... }`.
   */
  listKeys(prefix: string = "", limit: i32 = 100): KeyPages {
    return new KeyPages(this, utf8(prefix), limit);
  }

  /**
   * Pages of (key, value) pairs that start with `prefix`, with keys in
   * [start, end) when given, in key order or reversed, at most `limit`
   * (1..LIST_MAX_LIMIT) pairs a page (a page also stops at 1 MiB). Each page is
   * read from one snapshot of the store: `while (scan.next()) { ... scan.items ... }`.
   */
  scan(
    prefix: string = "",
    start: string | null = null,
    end: string | null = null,
    reverse: bool = false,
    limit: i32 = 100,
  ): ScanPages {
    return new ScanPages(this, prefix, start, end, reverse, limit);
  }

  /**
   * The values of `keys` (at most BATCH_MAX_ITEMS), in order, null where a key
   * is missing; null on failure.
   */
  getMany(keys: string[]): Array<Uint8Array | null> | null {
    if (!this.usable()) return null;
    const reply = fetch(GET_MANY, this.handle, encodeKeys(keys), null, 0, DEFAULT_HINT);
    if (reply === null) return null;
    const r = new Reader(reply);
    if (r.next() != ARRAY || r.count != keys.length) unreachable();
    const values = new Array<Uint8Array | null>(keys.length);
    for (let i = 0; i < keys.length; i++) {
      const kind = r.next();
      if (kind == NIL) values[i] = null;
      else if (kind == BIN) values[i] = r.copy();
      else unreachable();
    }
    return values;
  }

  /** Writes all `entries` (at most BATCH_MAX_ITEMS) or none. Whether it wrote. */
  setMany(entries: Entry[]): bool {
    if (!this.usable()) return false;
    const w = new Writer();
    w.header(0x80, 16, 0, 0xde, 0xdf, entries.length);
    for (let i = 0; i < entries.length; i++) {
      const entry = entries[i];
      w.str(utf8(entry.key));
      w.bin(entry.value);
    }
    const req = w.finish();
    return record(kv_set_many(this.handle, ptr(req), req.length, 0, 0)) >= 0;
  }

  /** Deletes `keys` (at most BATCH_MAX_ITEMS); how many existed (0 on failure too: check `failed()`). */
  deleteMany(keys: string[]): i32 {
    if (!this.usable()) return 0;
    const req = encodeKeys(keys);
    const rc = record(kv_delete_many(this.handle, ptr(req), req.length, 0, 0));
    return rc < 0 ? 0 : rc;
  }
}

/**
 * The pages of a `listKeys`. `next()` loads the next page into `keys` and says
 * whether there was one; it returns false once the listing is complete
 * (status OK) or when a call fails (`failed()`).
 */
export class KeyPages {
  /** The keys of the current page. */
  keys: string[] = [];
  /** Whether the listing is complete. */
  done: bool = false;
  private cursor: Uint8Array | null = null;

  constructor(
    private bucket: Bucket,
    private prefix: Uint8Array,
    private limit: i32,
  ) {}

  next(): bool {
    this.keys = [];
    if (this.done) {
      status_ = Status.OK;
      return false;
    }
    const bucket = this.bucket;
    if (!bucket.ok) {
      status_ = bucket.handle;
      return false;
    }
    const hint = this.limit > 0 && this.limit <= LIST_MAX_LIMIT ? this.limit * 32 + 64 : DEFAULT_HINT;
    const reply = fetch(LIST_KEYS, bucket.handle, this.prefix, this.cursor, this.limit, hint);
    if (reply === null) return false;
    const r = new Reader(reply);
    if (r.next() != MAP) unreachable();
    let haveKeys = false;
    let haveCursor = false;
    for (let fields = r.count; fields > 0; fields--) {
      const name = r.fieldName();
      if (name == "keys") {
        if (r.next() != ARRAY) unreachable();
        const keys = new Array<string>(r.count);
        for (let i = 0; i < keys.length; i++) {
          if (r.next() != STR) unreachable();
          keys[i] = r.text();
        }
        this.keys = keys;
        haveKeys = true;
      } else if (name == "cursor") {
        this.cursor = readCursor(r);
        this.done = this.cursor === null;
        haveCursor = true;
      } else {
        r.skip();
      }
    }
    if (!haveKeys || !haveCursor) unreachable();
    return true;
  }
}

/**
 * The pages of a `scan`. `next()` loads the next page into `items` and says
 * whether there was one; it returns false once the scan is complete (status
 * OK) or when a call fails (`failed()`).
 */
export class ScanPages {
  /** The pairs of the current page. */
  items: Pair[] = [];
  /** Whether the scan is complete. */
  done: bool = false;
  private cursor: Uint8Array | null = null;

  constructor(
    private bucket: Bucket,
    private prefix: string,
    private start: string | null,
    private end: string | null,
    private reverse: bool,
    private limit: i32,
  ) {}

  private request(): Uint8Array {
    const start = this.start;
    const end = this.end;
    const cursor = this.cursor;
    const w = new Writer();
    w.header(0x80, 16, 0, 0xde, 0xdf, 3 + <i32>(start !== null) + <i32>(end !== null) + <i32>(cursor !== null));
    w.str(utf8("prefix"));
    w.str(utf8(this.prefix));
    if (start !== null) {
      w.str(utf8("start"));
      w.str(utf8(start));
    }
    if (end !== null) {
      w.str(utf8("end"));
      w.str(utf8(end));
    }
    if (cursor !== null) {
      w.str(utf8("cursor"));
      w.str(cursor);
    }
    w.str(utf8("limit"));
    w.int(this.limit);
    w.str(utf8("reverse"));
    w.byte(this.reverse ? 0xc3 : 0xc2);
    return w.finish();
  }

  next(): bool {
    this.items = [];
    if (this.done) {
      status_ = Status.OK;
      return false;
    }
    const bucket = this.bucket;
    if (!bucket.ok) {
      status_ = bucket.handle;
      return false;
    }
    const hint = this.limit > 0 && this.limit <= LIST_MAX_LIMIT ? this.limit * 64 + 64 : DEFAULT_HINT;
    const reply = fetch(SCAN, bucket.handle, this.request(), null, 0, hint);
    if (reply === null) return false;
    const r = new Reader(reply);
    if (r.next() != MAP) unreachable();
    let haveItems = false;
    let haveCursor = false;
    for (let fields = r.count; fields > 0; fields--) {
      const name = r.fieldName();
      if (name == "items") {
        if (r.next() != ARRAY) unreachable();
        const items = new Array<Pair>(r.count);
        for (let i = 0; i < items.length; i++) {
          if (r.next() != ARRAY || r.count != 2) unreachable();
          if (r.next() != STR) unreachable();
          const key = r.text();
          if (r.next() != BIN) unreachable();
          items[i] = new Pair(key, r.copy());
        }
        this.items = items;
        haveItems = true;
      } else if (name == "cursor") {
        this.cursor = readCursor(r);
        this.done = this.cursor === null;
        haveCursor = true;
      } else {
        r.skip();
      }
    }
    if (!haveItems || !haveCursor) unreachable();
    return true;
  }
}

// ---- msgpack, as much as the batch, list and scan shapes need ----

/** A reply's cursor: the bytes of its str, or null (nil) when the listing is complete. */
function readCursor(r: Reader): Uint8Array | null {
  const kind = r.next();
  if (kind == NIL) return null;
  if (kind != STR) unreachable();
  return r.copy();
}

function encodeKeys(keys: string[]): Uint8Array {
  const w = new Writer();
  w.header(0x90, 16, 0, 0xdc, 0xdd, keys.length);
  for (let i = 0; i < keys.length; i++) w.str(utf8(keys[i]));
  return w.finish();
}

class Writer {
  buf: Uint8Array = new Uint8Array(64);
  len: i32 = 0;

  private room(n: i32): void {
    const need = this.len + n;
    if (need <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < need) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.buf.subarray(0, this.len));
    this.buf = grown;
  }

  byte(b: i32): void {
    this.room(1);
    this.buf[this.len++] = <u8>b;
  }

  /** `n` big-endian in `width` bytes. */
  be(n: u32, width: i32): void {
    this.room(width);
    for (let i = width - 1; i >= 0; i--) this.buf[this.len++] = <u8>(n >>> (8 * i));
  }

  put(bytes: Uint8Array): void {
    this.room(bytes.length);
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }

  /** The fix form (fixBase | n) when n < fixLimit, else the 8- (tag8 != 0), 16- or 32-bit length form. */
  header(fixBase: i32, fixLimit: i32, tag8: i32, tag16: i32, tag32: i32, n: i32): void {
    if (n < fixLimit) {
      this.byte(fixBase | n);
    } else if (tag8 != 0 && n <= 0xff) {
      this.byte(tag8);
      this.byte(n);
    } else if (n <= 0xffff) {
      this.byte(tag16);
      this.be(n, 2);
    } else {
      this.byte(tag32);
      this.be(n, 4);
    }
  }

  /** A str of the given UTF-8 bytes. */
  str(bytes: Uint8Array): void {
    this.header(0xa0, 32, 0xd9, 0xda, 0xdb, bytes.length);
    this.put(bytes);
  }

  bin(bytes: Uint8Array): void {
    this.header(0, 0, 0xc4, 0xc5, 0xc6, bytes.length);
    this.put(bytes);
  }

  int(n: i32): void {
    if (n >= 0 && n < 0x80) {
      this.byte(n);
    } else if (n >= 0) {
      this.byte(0xce); // uint32
      this.be(<u32>n, 4);
    } else {
      this.byte(0xd2); // int32
      this.be(<u32>n, 4);
    }
  }

  finish(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

// Kinds of msgpack values, as `Reader.next` returns them.
const SCALAR: i32 = 0; // numbers, bools, ext: nothing we read
const NIL: i32 = 1;
const STR: i32 = 2;
const BIN: i32 = 3;
const ARRAY: i32 = 4;
const MAP: i32 = 5;

/** Reads msgpack; anything truncated or invalid traps (a host bug). */
class Reader {
  pos: i32 = 0;
  /** Elements of the last array or map (a map's are pairs). */
  count: i32 = 0;
  /** Where the last str or bin's payload starts, and its length. */
  start: i32 = 0;
  len: i32 = 0;

  constructor(public buf: Uint8Array) {}

  private take(n: i32): i32 {
    if (n < 0 || this.buf.length - this.pos < n) unreachable();
    const at = this.pos;
    this.pos += n;
    return at;
  }

  private uint(width: i32): i32 {
    const at = this.take(width);
    let n: u32 = 0;
    for (let i = 0; i < width; i++) n = (n << 8) | this.buf[at + i];
    if (n > <u32>i32.MAX_VALUE) unreachable();
    return <i32>n;
  }

  /** The next value's kind; its header is consumed, and its payload unless it is an array or map. */
  next(): i32 {
    const t = <i32>this.buf[this.take(1)];
    if (t <= 0x7f || t >= 0xe0 || t == 0xc2 || t == 0xc3) return SCALAR;
    if (t <= 0x8f) {
      this.count = t & 0x0f;
      return MAP;
    }
    if (t <= 0x9f) {
      this.count = t & 0x0f;
      return ARRAY;
    }
    if (t <= 0xbf) return this.payload(STR, t & 0x1f);
    switch (t) {
      case 0xc0: return NIL;
      case 0xc4: return this.payload(BIN, this.uint(1));
      case 0xc5: return this.payload(BIN, this.uint(2));
      case 0xc6: return this.payload(BIN, this.uint(4));
      case 0xc7: this.take(this.uint(1) + 1); return SCALAR; // ext 8: length, type, data
      case 0xc8: this.take(this.uint(2) + 1); return SCALAR;
      case 0xc9: this.take(this.uint(4) + 1); return SCALAR;
      case 0xca: this.take(4); return SCALAR; // float 32
      case 0xcb: this.take(8); return SCALAR;
      case 0xcc: case 0xd0: this.take(1); return SCALAR; // (u)int 8
      case 0xcd: case 0xd1: this.take(2); return SCALAR;
      case 0xce: case 0xd2: this.take(4); return SCALAR;
      case 0xcf: case 0xd3: this.take(8); return SCALAR;
      case 0xd4: this.take(2); return SCALAR; // fixext 1: type, data
      case 0xd5: this.take(3); return SCALAR;
      case 0xd6: this.take(5); return SCALAR;
      case 0xd7: this.take(9); return SCALAR;
      case 0xd8: this.take(17); return SCALAR;
      case 0xd9: return this.payload(STR, this.uint(1));
      case 0xda: return this.payload(STR, this.uint(2));
      case 0xdb: return this.payload(STR, this.uint(4));
      case 0xdc: this.count = this.uint(2); return ARRAY;
      case 0xdd: this.count = this.uint(4); return ARRAY;
      case 0xde: this.count = this.uint(2); return MAP;
      case 0xdf: this.count = this.uint(4); return MAP;
    }
    unreachable(); // 0xc1 is never used
    return NIL;
  }

  private payload(kind: i32, n: i32): i32 {
    this.start = this.take(n);
    this.len = n;
    return kind;
  }

  /** The last str, decoded. */
  text(): string {
    return String.UTF8.decodeUnsafe(this.buf.dataStart + <usize>this.start, <usize>this.len);
  }

  /** A copy of the last str or bin's bytes. */
  copy(): Uint8Array {
    return this.buf.slice(this.start, this.start + this.len);
  }

  /** A map's next key, which must be a str. */
  fieldName(): string {
    if (this.next() != STR) unreachable();
    return this.text();
  }

  /** Skips one value, nested ones included. */
  skip(): void {
    let pending: i64 = 1;
    while (pending > 0) {
      pending--;
      const kind = this.next();
      if (kind == ARRAY) pending += this.count;
      else if (kind == MAP) pending += 2 * <i64>this.count;
    }
  }
}
