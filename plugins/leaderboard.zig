//! leaderboard: player scores ranked by key order in bucket "default". See plugins/README.md.

const std = @import("std");
const kv = @import("wasmkv");

const max_points = 999_999_999_999;
/// Small, so that a listing spans several pages.
const page_limit = 10;

const Failure = kv.AllocError || error{ UnknownPlayer, MalformedInput, CorruptState };

fn status(err: Failure) i32 {
    return switch (err) {
        error.UnknownPlayer => 1,
        error.MalformedInput => 2,
        error.CorruptState => 3,
        error.OutOfMemory => 4,
        else => |e| kv.code(e),
    };
}

/// Runs an entry point's body with the call's input, a per-call arena and the store.
fn entry(comptime body: fn (std.mem.Allocator, kv.Store, []const u8) Failure!void) i32 {
    var arena: std.heap.ArenaAllocator = .init(std.heap.wasm_allocator);
    defer arena.deinit();
    const allocator = arena.allocator();
    const in = kv.input(allocator) catch |err| return status(err);
    const store = kv.open("default") catch |err| return status(err);
    body(allocator, store, in) catch |err| return status(err);
    return 0;
}

export fn score() i32 {
    return entry(setScore);
}

export fn top() i32 {
    return entry(listTop);
}

export fn bottom() i32 {
    return entry(listBottom);
}

export fn get() i32 {
    return entry(getScore);
}

/// Input "<player> <points>".
fn setScore(allocator: std.mem.Allocator, store: kv.Store, in: []const u8) Failure!void {
    const name, const points_text = std.mem.cutScalar(u8, in, ' ') orelse return error.MalformedInput;
    if (!validName(name)) return error.MalformedInput;
    const points = kv.parseDecimal(points_text, max_points) orelse return error.MalformedInput;

    const player_key = try std.mem.concat(allocator, u8, &.{ "player:", name });
    const old: ?u64 = if (store.get(allocator, player_key)) |text|
        kv.parseDecimal(text, max_points) orelse return error.CorruptState
    else |err| switch (err) {
        error.NotFound => null,
        else => |e| return e,
    };

    // Write first, then drop the old rank key: set_many is all or nothing, so
    // a failure (say, quota) leaves the previous score fully in place.
    var digits: [12]u8 = undefined;
    try store.setMany(allocator, &.{
        .{ .key = player_key, .value = kv.fmt(&digits, "{d}", .{points}) },
        .{ .key = try rankKey(allocator, points, name), .value = "" },
    });
    if (old) |o| if (o != points) {
        _ = try store.deleteMany(allocator, &.{try rankKey(allocator, o, name)});
    };
}

/// Input "<n>", 1..1000: the best n players, one "<name> <score>\n" line each.
fn listTop(allocator: std.mem.Allocator, store: kv.Store, in: []const u8) Failure!void {
    var left = kv.parseDecimal(in, 1000) orelse return error.MalformedInput;
    if (left == 0) return error.MalformedInput;
    var pages = store.listKeys(allocator, "rank:", page_limit);
    defer pages.deinit();
    while (try pages.next()) |page| {
        while (page.next()) |key| {
            // Another plugin may own keys under "rank:" too; skip what is not ours.
            const rank = parseRankKey(key) orelse continue;
            var line: [80]u8 = undefined;
            kv.output(kv.fmt(&line, "{s} {d}\n", .{ rank.name, rank.points }));
            left -= 1;
            if (left == 0) return;
        }
    }
}

/// Input "<n>", 1..1000: the n lowest scores, worst first, one "<name> <score>\n" line each.
/// A reverse scan of the same rank keys `top` lists forwards.
fn listBottom(allocator: std.mem.Allocator, store: kv.Store, in: []const u8) Failure!void {
    var left = kv.parseDecimal(in, 1000) orelse return error.MalformedInput;
    if (left == 0) return error.MalformedInput;
    var scan = store.scan(allocator, .{ .prefix = "rank:", .limit = page_limit, .reverse = true });
    defer scan.deinit();
    while (try scan.next()) |page| {
        while (page.next()) |pair| {
            const rank = parseRankKey(pair.key) orelse continue;
            var line: [80]u8 = undefined;
            kv.output(kv.fmt(&line, "{s} {d}\n", .{ rank.name, rank.points }));
            left -= 1;
            if (left == 0) return;
        }
    }
}

/// Input "<player>": outputs the score.
fn getScore(allocator: std.mem.Allocator, store: kv.Store, in: []const u8) Failure!void {
    if (!validName(in)) return error.MalformedInput;
    const player_key = try std.mem.concat(allocator, u8, &.{ "player:", in });
    const text = store.get(allocator, player_key) catch |err| switch (err) {
        error.NotFound => return error.UnknownPlayer,
        else => |e| return e,
    };
    kv.output(text);
}

/// 1..64 bytes of UTF-8 without spaces, ':' or control characters (which keys reject).
fn validName(name: []const u8) bool {
    if (name.len == 0 or name.len > 64 or !std.unicode.utf8ValidateSlice(name)) return false;
    for (name) |c| if (c == ' ' or c == ':' or c < 0x20 or c == 0x7f) return false;
    return true;
}

/// "rank:<999999999999 - points, 12 digits>:<name>": ascending keys are descending points.
fn rankKey(allocator: std.mem.Allocator, points: u64, name: []const u8) std.mem.Allocator.Error![]u8 {
    var digits: [12]u8 = undefined;
    return std.mem.concat(allocator, u8, &.{ "rank:", kv.fmt(&digits, "{d:0>12}", .{max_points - points}), ":", name });
}

const Rank = struct { points: u64, name: []const u8 };

fn parseRankKey(key: []const u8) ?Rank {
    const rest = std.mem.cutPrefix(u8, key, "rank:") orelse return null;
    if (rest.len < 14 or rest[12] != ':' or !validName(rest[13..])) return null;
    const inverted = kv.parseDecimal(rest[0..12], max_points) orelse return null;
    return .{ .points = max_points - inverted, .name = rest[13..] };
}
