//! wasmkv.zig: Zig SDK for wasmkv plugins. The contract is abi/ABI.md.
//!
//! Use it as the module "wasmkv" (`const kv = @import("wasmkv");`):
//!
//!   zig build-exe -target wasm32-freestanding -fno-entry -rdynamic
//!       -O ReleaseSmall -fstrip --dep wasmkv -Mroot=plugin.zig
//!       -Mwasmkv=abi/guest/wasmkv.zig
//!
//! Calls return `Error` (one error per negative status code; `code` turns it
//! back into the number). Calls that take an allocator can also fail with
//! `error.OutOfMemory`, which has no status code: the plugin decides what it
//! means. Variable-size results follow the ABI's buffer rule: `*Into` variants
//! return the full length and fill the caller's buffer only if it fits; the
//! allocating variants retry until the result fits.

const std = @import("std");
const Allocator = std.mem.Allocator;

/// One error per negative status code of the ABI.
pub const Error = error{
    NotFound,
    InvalidKey,
    ValueTooLarge,
    QuotaExceeded,
    NotANumber,
    IntegerOverflow,
    AccessDenied,
    BadHandle,
    BadPointer,
    RateLimited,
    BackendUnavailable,
    InvalidArgument,
};

/// Errors of calls that also allocate.
pub const AllocError = Error || Allocator.Error;

/// The status code of an error, e.g. to return it from an entry point.
pub fn code(err: Error) i32 {
    return switch (err) {
        error.NotFound => -1,
        error.InvalidKey => -2,
        error.ValueTooLarge => -3,
        error.QuotaExceeded => -4,
        error.NotANumber => -5,
        error.IntegerOverflow => -6,
        error.AccessDenied => -7,
        error.BadHandle => -8,
        error.BadPointer => -9,
        error.RateLimited => -10,
        error.BackendUnavailable => -11,
        error.InvalidArgument => -12,
    };
}

/// An import's result: the non-negative value, or the error for its code.
fn check(rc: i32) Error!u31 {
    if (rc >= 0) return @intCast(rc);
    inline for (@typeInfo(Error).error_set.error_names.?) |name| {
        const err = @field(Error, name);
        if (rc == comptime code(err)) return err;
    }
    // The ABI lists every code; anything else is a host bug, and host bugs trap.
    @trap();
}

pub const LogLevel = enum(i32) { debug = 0, info = 1, warning = 2, err = 3 };

/// Largest list_keys limit and batch request (abi.LIST_MAX_LIMIT, BATCH_MAX_ITEMS).
pub const list_max_limit = 1000;
pub const batch_max_items = 1000;

// Pointers are passed as addresses (see `addr`). Lengths are usize so that an
// impossible length (>= 2 GiB) reaches the host as a negative i32 and fails
// with BadPointer; capacities are clamped instead (see `cap`).
const raw = struct {
    extern "kv" fn open(name_ptr: usize, name_len: usize) i32;
    extern "kv" fn get(store: i32, key_ptr: usize, key_len: usize, out_ptr: usize, out_cap: i32) i32;
    extern "kv" fn set(store: i32, key_ptr: usize, key_len: usize, val_ptr: usize, val_len: usize) i32;
    extern "kv" fn set_with_ttl(store: i32, key_ptr: usize, key_len: usize, val_ptr: usize, val_len: usize, ttl_ms: i64) i32;
    extern "kv" fn delete(store: i32, key_ptr: usize, key_len: usize) i32;
    extern "kv" fn exists(store: i32, key_ptr: usize, key_len: usize) i32;
    extern "kv" fn increment(store: i32, key_ptr: usize, key_len: usize, delta: i64, out: *i64) i32;
    extern "kv" fn compare_and_swap(store: i32, key_ptr: usize, key_len: usize, exp_ptr: usize, exp_len: i32, new_ptr: usize, new_len: usize) i32;
    extern "kv" fn list_keys(store: i32, prefix_ptr: usize, prefix_len: usize, cursor_ptr: usize, cursor_len: usize, limit: i32, out_ptr: usize, out_cap: i32) i32;
    extern "kv" fn scan(store: i32, req_ptr: usize, req_len: usize, out_ptr: usize, out_cap: i32) i32;
    extern "kv" fn get_many(store: i32, req_ptr: usize, req_len: usize, out_ptr: usize, out_cap: i32) i32;
    extern "kv" fn set_many(store: i32, req_ptr: usize, req_len: usize, out_ptr: usize, out_cap: i32) i32;
    extern "kv" fn delete_many(store: i32, req_ptr: usize, req_len: usize, out_ptr: usize, out_cap: i32) i32;
    extern "host" fn input(out_ptr: usize, out_cap: i32) i32;
    extern "host" fn output(ptr: usize, len: usize) i32;
    extern "host" fn log(level: i32, ptr: usize, len: usize) void;
};

/// A slice's address for the host. Zig gives an empty slice an arbitrary
/// pointer, possibly outside memory, which the host would reject; an empty
/// range at 0 always lies inside.
fn addr(s: []const u8) usize {
    return if (s.len == 0) 0 else @intFromPtr(s.ptr);
}

fn cap(buf: []u8) i32 {
    return @intCast(@min(buf.len, std.math.maxInt(i32)));
}

/// Runs `req.fill(buf)`, one call of a buffer-rule import, until the result
/// fits: first into `hint` bytes, then into the length the previous call
/// reported (the data may change between calls). Returns exactly the result.
fn fetch(comptime E: type, allocator: Allocator, req: anytype, hint: usize) (E || Allocator.Error)![]u8 {
    var buf = try allocator.alloc(u8, hint);
    errdefer allocator.free(buf);
    while (true) {
        const len = try req.fill(buf);
        if (len <= buf.len) return allocator.realloc(buf, len);
        buf = try allocator.realloc(buf, len);
    }
}

/// First buffer size for values, inputs and batch replies.
const default_hint = 256;

/// The call's input length; the input is in `buf` if it fits.
pub fn inputInto(buf: []u8) usize {
    return @intCast(raw.input(addr(buf), cap(buf)));
}

/// The call's input, allocated.
pub fn input(allocator: Allocator) Allocator.Error![]u8 {
    const Request = struct {
        fn fill(_: @This(), buf: []u8) error{}!usize {
            return inputInto(buf);
        }
    };
    return fetch(error{}, allocator, Request{}, default_hint);
}

/// Appends to the call's output.
pub fn output(bytes: []const u8) void {
    // The only failure is BadPointer, which a slice cannot cause.
    _ = raw.output(addr(bytes), bytes.len);
}

pub fn log(level: LogLevel, text: []const u8) void {
    raw.log(@intFromEnum(level), addr(text), text.len);
}

/// Opens a bucket granted to this plugin.
pub fn open(name: []const u8) Error!Store {
    return .{ .handle = try check(raw.open(addr(name), name.len)) };
}

/// One entry of a `setMany` request.
pub const Entry = struct { key: []const u8, value: []const u8 };

pub const Store = struct {
    handle: i32,

    /// The value's length (error.NotFound if missing); the value is in `buf` if it fits.
    pub fn getInto(self: Store, key: []const u8, buf: []u8) Error!usize {
        return try check(raw.get(self.handle, addr(key), key.len, addr(buf), cap(buf)));
    }

    /// The value, allocated (error.NotFound if missing).
    pub fn get(self: Store, allocator: Allocator, key: []const u8) AllocError![]u8 {
        const Request = struct {
            store: Store,
            key: []const u8,
            fn fill(r: @This(), buf: []u8) Error!usize {
                return r.store.getInto(r.key, buf);
            }
        };
        return fetch(Error, allocator, Request{ .store = self, .key = key }, default_hint);
    }

    pub fn set(self: Store, key: []const u8, value: []const u8) Error!void {
        _ = try check(raw.set(self.handle, addr(key), key.len, addr(value), value.len));
    }

    /// `ttl_ms` must be > 0.
    pub fn setWithTtl(self: Store, key: []const u8, value: []const u8, ttl_ms: i64) Error!void {
        _ = try check(raw.set_with_ttl(self.handle, addr(key), key.len, addr(value), value.len, ttl_ms));
    }

    /// Whether the key existed.
    pub fn delete(self: Store, key: []const u8) Error!bool {
        return try check(raw.delete(self.handle, addr(key), key.len)) == 1;
    }

    pub fn exists(self: Store, key: []const u8) Error!bool {
        return try check(raw.exists(self.handle, addr(key), key.len)) == 1;
    }

    /// Adds `delta` (a missing key counts as 0) and returns the new value.
    pub fn increment(self: Store, key: []const u8, delta: i64) Error!i64 {
        var value: i64 = undefined;
        _ = try check(raw.increment(self.handle, addr(key), key.len, delta, &value));
        return value;
    }

    /// Sets `key` to `new` if its value is `expected` (null: if it is absent).
    /// Whether it swapped.
    pub fn compareAndSwap(self: Store, key: []const u8, expected: ?[]const u8, new: []const u8) Error!bool {
        const exp_ptr: usize, const exp_len: i32 = if (expected) |e|
            .{ addr(e), std.math.cast(i32, e.len) orelse return error.BadPointer }
        else
            .{ 0, -1 };
        return try check(raw.compare_and_swap(self.handle, addr(key), key.len, exp_ptr, exp_len, addr(new), new.len)) == 1;
    }

    /// Pages of the keys that start with `prefix`, in byte order, `limit`
    /// (1..list_max_limit) keys per page. Call `deinit` when done.
    pub fn listKeys(self: Store, allocator: Allocator, prefix: []const u8, limit: u16) Pages {
        return .{ .store = self, .allocator = allocator, .prefix = prefix, .limit = limit };
    }

    /// Pages of (key, value) pairs, each page read from one snapshot of the
    /// store. Call `deinit` when done.
    pub fn scan(self: Store, allocator: Allocator, options: ScanOptions) Scan {
        return .{ .store = self, .allocator = allocator, .options = options };
    }

    /// The values of `keys`, in order (null where missing). Call `deinit` on the result.
    pub fn getMany(self: Store, allocator: Allocator, keys: []const []const u8) AllocError!Values {
        const req = try encode(allocator, writeKeys, keys);
        defer allocator.free(req);
        const Request = struct {
            store: Store,
            req: []const u8,
            fn fill(r: @This(), buf: []u8) Error!usize {
                return try check(raw.get_many(r.store.handle, addr(r.req), r.req.len, addr(buf), cap(buf)));
            }
        };
        const reply = try fetch(Error, allocator, Request{ .store = self, .req = req }, default_hint);
        errdefer allocator.free(reply);
        const items = try allocator.alloc(?[]const u8, keys.len);
        var r: Reader = .{ .bytes = reply };
        const count = r.next() orelse @trap();
        if (count != .array or count.array != keys.len) @trap();
        for (items) |*item| item.* = switch (r.next() orelse @trap()) {
            .nil => null,
            .bin => |b| b,
            else => @trap(),
        };
        return .{ .items = items, .reply = reply };
    }

    /// Writes all entries or none.
    pub fn setMany(self: Store, allocator: Allocator, entries: []const Entry) AllocError!void {
        const req = try encode(allocator, writeEntries, entries);
        defer allocator.free(req);
        _ = try check(raw.set_many(self.handle, addr(req), req.len, 0, 0));
    }

    /// How many of `keys` existed.
    pub fn deleteMany(self: Store, allocator: Allocator, keys: []const []const u8) AllocError!u32 {
        const req = try encode(allocator, writeKeys, keys);
        defer allocator.free(req);
        return try check(raw.delete_many(self.handle, addr(req), req.len, 0, 0));
    }
};

/// A `getMany` result.
pub const Values = struct {
    /// One per requested key, in order; null where the key is missing.
    /// The slices point into `reply`.
    items: []?[]const u8,
    reply: []u8,

    pub fn deinit(self: Values, allocator: Allocator) void {
        allocator.free(self.items);
        allocator.free(self.reply);
    }
};

/// Iterator over the pages of a listing (`Store.listKeys`).
pub const Pages = struct {
    store: Store,
    allocator: Allocator,
    prefix: []const u8,
    limit: u16,
    /// Where the next page starts (in `page.reply`); null before the first page.
    cursor: ?[]const u8 = null,
    done: bool = false,
    page: Page = .{},

    /// The next page, valid until the following call; null after the last.
    /// A malformed reply is a host bug and traps.
    pub fn next(self: *Pages) AllocError!?*Page {
        if (self.done) return null;
        const Request = struct {
            pages: *const Pages,
            fn fill(r: @This(), buf: []u8) Error!usize {
                const p = r.pages;
                const cursor = p.cursor orelse "";
                return try check(raw.list_keys(p.store.handle, addr(p.prefix), p.prefix.len, addr(cursor), cursor.len, p.limit, addr(buf), cap(buf)));
            }
        };
        // Pages tend to be alike: start from the last one's size, or a guess.
        const hint = if (self.page.reply.len > 0) self.page.reply.len else @as(usize, self.limit) * 32 + 64;
        const reply = try fetch(Error, self.allocator, Request{ .pages = self }, hint);
        // The old page held the cursor the request needed; now it can go.
        self.allocator.free(self.page.reply);
        self.page = .{ .reply = reply };

        var r: Reader = .{ .bytes = reply };
        const fields = r.next() orelse @trap();
        if (fields != .map) @trap();
        var have_keys = false;
        var have_cursor = false;
        for (0..fields.map) |_| {
            const name = r.next() orelse @trap();
            if (name != .str) @trap();
            if (std.mem.eql(u8, name.str, "keys")) {
                const keys = r.next() orelse @trap();
                if (keys != .array) @trap();
                self.page.keys = r;
                self.page.remaining = keys.array;
                for (0..keys.array) |_| {
                    if ((r.next() orelse @trap()) != .str) @trap();
                }
                have_keys = true;
            } else if (std.mem.eql(u8, name.str, "cursor")) {
                switch (r.next() orelse @trap()) {
                    .nil => self.done = true,
                    .str => |c| self.cursor = c,
                    else => @trap(),
                }
                have_cursor = true;
            } else if (!r.skip()) @trap();
        }
        if (!have_keys or !have_cursor) @trap();
        return &self.page;
    }

    pub fn deinit(self: *Pages) void {
        self.allocator.free(self.page.reply);
    }
};

/// One page of keys.
pub const Page = struct {
    reply: []u8 = &.{},
    keys: Reader = .{ .bytes = &.{} },
    /// Keys of this page not yet returned by `next`.
    remaining: u32 = 0,

    pub fn next(self: *Page) ?[]const u8 {
        if (self.remaining == 0) return null;
        self.remaining -= 1;
        // Pages.next checked that every key is a str.
        return (self.keys.next() orelse unreachable).str;
    }
};

/// What `Store.scan` walks.
pub const ScanOptions = struct {
    /// Only keys starting with this.
    prefix: []const u8 = "",
    /// Only keys >= start (byte order), if set.
    start: ?[]const u8 = null,
    /// Only keys < end, if set.
    end: ?[]const u8 = null,
    /// Pairs per page, 1..list_max_limit (a page also stops at 1 MiB).
    limit: u16 = 100,
    /// Descending key order.
    reverse: bool = false,
};

/// Iterator over the pages of a scan (`Store.scan`).
pub const Scan = struct {
    store: Store,
    allocator: Allocator,
    options: ScanOptions,
    /// Where the next page starts (in `page.reply`); null before the first page.
    cursor: ?[]const u8 = null,
    done: bool = false,
    page: ScanPage = .{},

    fn writeRequest(w: *Writer, sc: *const Scan) void {
        const o = sc.options;
        const fields = @as(usize, 3) + @intFromBool(o.start != null) + @intFromBool(o.end != null) + @intFromBool(sc.cursor != null);
        w.header(0x80, 16, null, 0xde, 0xdf, fields);
        w.str("prefix");
        w.str(o.prefix);
        if (o.start) |start| {
            w.str("start");
            w.str(start);
        }
        if (o.end) |end| {
            w.str("end");
            w.str(end);
        }
        if (sc.cursor) |cursor| {
            w.str("cursor");
            w.str(cursor);
        }
        w.str("limit");
        w.put(&.{0xcd}); // uint16
        w.put(&std.mem.toBytes(std.mem.nativeToBig(u16, o.limit)));
        w.str("reverse");
        w.put(&.{if (o.reverse) 0xc3 else 0xc2});
    }

    /// The next page, valid until the following call; null after the last.
    /// A malformed reply is a host bug and traps.
    pub fn next(self: *Scan) AllocError!?*ScanPage {
        if (self.done) return null;
        const req = try encode(self.allocator, writeRequest, @as(*const Scan, self));
        defer self.allocator.free(req);
        const Request = struct {
            store: Store,
            req: []const u8,
            fn fill(r: @This(), buf: []u8) Error!usize {
                return try check(raw.scan(r.store.handle, addr(r.req), r.req.len, addr(buf), cap(buf)));
            }
        };
        const hint = if (self.page.reply.len > 0) self.page.reply.len else @as(usize, self.options.limit) * 64 + 64;
        const reply = try fetch(Error, self.allocator, Request{ .store = self.store, .req = req }, hint);
        // The old page held the cursor the request needed; now it can go.
        self.allocator.free(self.page.reply);
        self.page = .{ .reply = reply };

        var r: Reader = .{ .bytes = reply };
        const fields = r.next() orelse @trap();
        if (fields != .map) @trap();
        var have_items = false;
        var have_cursor = false;
        for (0..fields.map) |_| {
            const name = r.next() orelse @trap();
            if (name != .str) @trap();
            if (std.mem.eql(u8, name.str, "items")) {
                const items = r.next() orelse @trap();
                if (items != .array) @trap();
                self.page.items = r;
                self.page.remaining = items.array;
                for (0..items.array) |_| {
                    const pair = r.next() orelse @trap();
                    if (pair != .array or pair.array != 2) @trap();
                    if ((r.next() orelse @trap()) != .str) @trap();
                    if ((r.next() orelse @trap()) != .bin) @trap();
                }
                have_items = true;
            } else if (std.mem.eql(u8, name.str, "cursor")) {
                switch (r.next() orelse @trap()) {
                    .nil => self.done = true,
                    .str => |c| self.cursor = c,
                    else => @trap(),
                }
                have_cursor = true;
            } else if (!r.skip()) @trap();
        }
        if (!have_items or !have_cursor) @trap();
        return &self.page;
    }

    pub fn deinit(self: *Scan) void {
        self.allocator.free(self.page.reply);
    }
};

/// One key and its value; both point into their page.
pub const Pair = struct { key: []const u8, value: []const u8 };

/// One page of a scan.
pub const ScanPage = struct {
    reply: []u8 = &.{},
    items: Reader = .{ .bytes = &.{} },
    /// Pairs of this page not yet returned by `next`.
    remaining: u32 = 0,

    pub fn next(self: *ScanPage) ?Pair {
        if (self.remaining == 0) return null;
        self.remaining -= 1;
        // Scan.next checked every pair's shape.
        _ = self.items.next() orelse unreachable;
        const key = (self.items.next() orelse unreachable).str;
        const value = (self.items.next() orelse unreachable).bin;
        return .{ .key = key, .value = value };
    }
};

// ---- msgpack, as much as the batch requests and replies need ----

fn writeKeys(w: *Writer, keys: []const []const u8) void {
    w.header(0x90, 16, null, 0xdc, 0xdd, keys.len);
    for (keys) |key| w.str(key);
}

fn writeEntries(w: *Writer, entries: []const Entry) void {
    w.header(0x80, 16, null, 0xde, 0xdf, entries.len);
    for (entries) |e| {
        w.str(e.key);
        w.header(0, 0, 0xc4, 0xc5, 0xc6, e.value.len);
        w.put(e.value);
    }
}

/// Encodes a request into an allocation of exactly its size (a first pass measures it).
fn encode(allocator: Allocator, comptime write: anytype, items: anytype) Allocator.Error![]u8 {
    var measure: Writer = .{ .buf = null };
    write(&measure, items);
    const buf = try allocator.alloc(u8, measure.len);
    var w: Writer = .{ .buf = buf };
    write(&w, items);
    return buf;
}

const Writer = struct {
    /// null while measuring.
    buf: ?[]u8,
    len: usize = 0,

    fn put(w: *Writer, bytes: []const u8) void {
        if (w.buf) |buf| @memcpy(buf[w.len..][0..bytes.len], bytes);
        w.len += bytes.len;
    }

    /// The fix form (base | n) when n < fix_limit, else the 8-, 16- or 32-bit length form.
    fn header(w: *Writer, fix_base: u8, fix_limit: usize, tag8: ?u8, tag16: u8, tag32: u8, n: usize) void {
        if (n < fix_limit) {
            w.put(&.{fix_base | @as(u8, @intCast(n))});
        } else if (tag8 != null and n <= 0xff) {
            w.put(&.{ tag8.?, @intCast(n) });
        } else if (n <= 0xffff) {
            w.put(&.{tag16});
            w.put(&std.mem.toBytes(std.mem.nativeToBig(u16, @intCast(n))));
        } else {
            w.put(&.{tag32});
            w.put(&std.mem.toBytes(std.mem.nativeToBig(u32, @intCast(n))));
        }
    }

    fn str(w: *Writer, s: []const u8) void {
        w.header(0xa0, 32, 0xd9, 0xda, 0xdb, s.len);
        w.put(s);
    }
};

const Reader = struct {
    bytes: []const u8,
    pos: usize = 0,

    const Item = union(enum) {
        /// Any value without a payload we use (numbers, bools, ext).
        scalar,
        nil,
        str: []const u8,
        bin: []const u8,
        /// Element counts; the elements follow.
        array: u32,
        map: u32,
    };

    fn take(r: *Reader, n: usize) ?[]const u8 {
        if (r.bytes.len - r.pos < n) return null;
        defer r.pos += n;
        return r.bytes[r.pos..][0..n];
    }

    /// The next value's header (and payload, except for array/map elements);
    /// null if truncated or invalid.
    fn next(r: *Reader) ?Item {
        const t = (r.take(1) orelse return null)[0];
        var kind: std.meta.Tag(Item) = .scalar;
        var n: usize = 0; // payload bytes, or elements of an array/map
        var len_bytes: usize = 0; // width of a big-endian length after the tag
        var extra: usize = 0; // payload bytes besides the length (ext type byte)
        switch (t) {
            0x00...0x7f, 0xc2, 0xc3, 0xe0...0xff => {},
            0x80...0x8f => {
                kind = .map;
                n = t & 0x0f;
            },
            0x90...0x9f => {
                kind = .array;
                n = t & 0x0f;
            },
            0xa0...0xbf => {
                kind = .str;
                n = t & 0x1f;
            },
            0xc0 => kind = .nil,
            0xc1 => return null,
            0xc4...0xc6 => {
                kind = .bin;
                len_bytes = @as(usize, 1) << @intCast(t - 0xc4);
            },
            0xc7...0xc9 => {
                len_bytes = @as(usize, 1) << @intCast(t - 0xc7);
                extra = 1;
            },
            0xca => n = 4,
            0xcb => n = 8,
            0xcc...0xd3 => n = @as(usize, 1) << @intCast((t - 0xcc) & 3),
            0xd4...0xd8 => n = 1 + (@as(usize, 1) << @intCast(t - 0xd4)),
            0xd9...0xdb => {
                kind = .str;
                len_bytes = @as(usize, 1) << @intCast(t - 0xd9);
            },
            0xdc, 0xdd => {
                kind = .array;
                len_bytes = if (t == 0xdc) 2 else 4;
            },
            0xde, 0xdf => {
                kind = .map;
                len_bytes = if (t == 0xde) 2 else 4;
            },
        }
        if (len_bytes > 0) n = std.mem.readVarInt(usize, r.take(len_bytes) orelse return null, .big);
        return switch (kind) {
            .scalar => if (r.take(n + extra) == null) null else .scalar,
            .nil => .nil,
            .str => .{ .str = r.take(n) orelse return null },
            .bin => .{ .bin = r.take(n) orelse return null },
            .array => .{ .array = @intCast(n) },
            .map => .{ .map = @intCast(n) },
        };
    }

    /// Skips one value, nested ones included; false if malformed.
    fn skip(r: *Reader) bool {
        var pending: u64 = 1;
        while (pending > 0) : (pending -= 1) {
            switch (r.next() orelse return false) {
                .array => |n| pending += n,
                .map => |n| pending += 2 * @as(u64, n),
                else => {},
            }
        }
        return true;
    }
};


/// Formats into `buf`, which the caller sizes for the largest value it formats.
pub fn fmt(buf: []u8, comptime format: []const u8, args: anytype) []const u8 {
    return std.fmt.bufPrint(buf, format, args) catch unreachable;
}

/// A non-empty string of ASCII digits with a value <= max (no sign, no '_'), or null.
pub fn parseDecimal(text: []const u8, max: u64) ?u64 {
    if (text.len == 0) return null;
    var n: u64 = 0;
    for (text) |c| {
        if (c < '0' or c > '9') return null;
        n = std.math.mul(u64, n, 10) catch return null;
        n = std.math.add(u64, n, c - '0') catch return null;
    }
    return if (n <= max) n else null;
}
