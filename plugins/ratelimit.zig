//! ratelimit: a token bucket per client in bucket "default". See plugins/README.md.

const std = @import("std");
const kv = @import("wasmkv");

const capacity = 5;
const refill_ms = 1000;

const Failure = kv.AllocError || error{ MalformedInput, CorruptState };

fn status(err: Failure) i32 {
    return switch (err) {
        error.MalformedInput => 2,
        error.CorruptState => 3,
        error.OutOfMemory => 4,
        else => |e| kv.code(e),
    };
}

export fn allow() i32 {
    var arena: std.heap.ArenaAllocator = .init(std.heap.wasm_allocator);
    defer arena.deinit();
    run(arena.allocator()) catch |err| return status(err);
    return 0;
}

/// Stored as "<tokens> <last_ms>" under "tb:<client_id>".
const Bucket = struct {
    tokens: u64,
    /// The caller's clock when the tokens were last counted.
    last_ms: u64,

    fn parse(text: []const u8) ?Bucket {
        const tokens, const last = std.mem.cutScalar(u8, text, ' ') orelse return null;
        return .{
            .tokens = kv.parseDecimal(tokens, capacity) orelse return null,
            .last_ms = kv.parseDecimal(last, std.math.maxInt(i64)) orelse return null,
        };
    }

    /// Adds the tokens earned since last_ms, keeping the unspent part of the
    /// current second. A full bucket restarts its clock at now. A clock that
    /// went backwards earns nothing.
    fn refill(b: *Bucket, now: u64) void {
        const earned = (now -| b.last_ms) / refill_ms;
        if (b.tokens + earned >= capacity) {
            b.* = .{ .tokens = capacity, .last_ms = now };
        } else {
            b.tokens += earned;
            b.last_ms += earned * refill_ms;
        }
    }
};

fn run(allocator: std.mem.Allocator) Failure!void {
    const in = try kv.input(allocator);
    const client, const now_text = std.mem.cutScalar(u8, in, ' ') orelse return error.MalformedInput;
    if (client.len == 0) return error.MalformedInput;
    const now = kv.parseDecimal(now_text, std.math.maxInt(i64)) orelse return error.MalformedInput;

    const store = try kv.open("default");
    const bucket_key = try std.mem.concat(allocator, u8, &.{ "tb:", client });
    const cooldown_key = try std.mem.concat(allocator, u8, &.{ "cooldown:", client });

    // The cooldown holds the caller-clock time of the next token.
    var text: [24]u8 = undefined;
    if (try store.exists(cooldown_key)) cooldown: {
        const len = store.getInto(cooldown_key, &text) catch |err| switch (err) {
            error.NotFound => break :cooldown, // expired since exists
            else => |e| return e,
        };
        const next_ms = if (len <= text.len) kv.parseDecimal(text[0..len], std.math.maxInt(u64)) else null;
        return deny(next_ms orelse return error.CorruptState, now);
    }

    while (true) {
        const old: ?[]const u8 = if (store.getInto(bucket_key, &text)) |len|
            if (len <= text.len) text[0..len] else return error.CorruptState
        else |err| switch (err) {
            error.NotFound => null,
            else => |e| return e,
        };
        var bucket: Bucket = if (old) |o|
            Bucket.parse(o) orelse return error.CorruptState
        else
            .{ .tokens = capacity, .last_ms = now };
        bucket.refill(now);

        if (bucket.tokens == 0) {
            // Nothing earned, so the next token is due after now and the TTL is > 0.
            // The state is unchanged: no write needed.
            const next_ms = bucket.last_ms + refill_ms;
            var buf: [20]u8 = undefined;
            const ttl = @min(next_ms - now, std.math.maxInt(i64));
            try store.setWithTtl(cooldown_key, kv.fmt(&buf, "{d}", .{next_ms}), @intCast(ttl));
            return deny(next_ms, now);
        }

        bucket.tokens -= 1;
        var new: [48]u8 = undefined;
        // Swaps only if nobody spent or refilled since our read; else retry.
        if (try store.compareAndSwap(bucket_key, old, kv.fmt(&new, "{d} {d}", .{ bucket.tokens, bucket.last_ms }))) {
            var out: [32]u8 = undefined;
            kv.output(kv.fmt(&out, "allow {d}", .{bucket.tokens}));
            return;
        }
    }
}

fn deny(next_ms: u64, now: u64) void {
    var out: [32]u8 = undefined;
    kv.output(kv.fmt(&out, "deny {d}", .{next_ms -| now}));
}
