//! The ABI's imports as declared to the linker, one for one with
//! `KV_IMPORTS` and `HOST_IMPORTS` in `wasmkv.abi`. Prefer the safe API of the
//! crate root; these are for what it does not cover.
//!
//! Pointers and lengths are `i32` on wasm32. Lengths are `usize` so that an
//! impossible length (2 GiB or more) reaches the host as a negative `i32` and
//! fails with `BAD_POINTER`; capacities are `i32`, clamped by the callers.

#[link(wasm_import_module = "kv")]
extern "C" {
    /// `kv.open`: a bucket's handle (>= 0), or an error.
    pub fn open(name_ptr: *const u8, name_len: usize) -> i32;
    /// `kv.get`: the value's length (buffer rule), `-1` if missing, or an error.
    pub fn get(store: i32, key_ptr: *const u8, key_len: usize, out_ptr: *mut u8, out_cap: i32) -> i32;
    /// `kv.set`: `0` or an error.
    pub fn set(store: i32, key_ptr: *const u8, key_len: usize, val_ptr: *const u8, val_len: usize) -> i32;
    /// `kv.set_with_ttl`: `0` or an error.
    pub fn set_with_ttl(
        store: i32,
        key_ptr: *const u8,
        key_len: usize,
        val_ptr: *const u8,
        val_len: usize,
        ttl_ms: i64,
    ) -> i32;
    /// `kv.delete`: `1` existed, `0` did not, or an error.
    pub fn delete(store: i32, key_ptr: *const u8, key_len: usize) -> i32;
    /// `kv.exists`: `1`, `0`, or an error.
    pub fn exists(store: i32, key_ptr: *const u8, key_len: usize) -> i32;
    /// `kv.increment`: `0` with the new value at `out`, or an error.
    pub fn increment(store: i32, key_ptr: *const u8, key_len: usize, delta: i64, out: *mut i64) -> i32;
    /// `kv.compare_and_swap`: `1` swapped, `0` mismatch, or an error; `exp_len = -1`: only if absent.
    pub fn compare_and_swap(
        store: i32,
        key_ptr: *const u8,
        key_len: usize,
        exp_ptr: *const u8,
        exp_len: i32,
        new_ptr: *const u8,
        new_len: usize,
    ) -> i32;
    /// `kv.list_keys`: the length of the msgpack page (buffer rule), or an error.
    pub fn list_keys(
        store: i32,
        prefix_ptr: *const u8,
        prefix_len: usize,
        cursor_ptr: *const u8,
        cursor_len: usize,
        limit: i32,
        out_ptr: *mut u8,
        out_cap: i32,
    ) -> i32;
    /// `kv.scan`: the length of the msgpack reply (buffer rule), or an error.
    pub fn scan(store: i32, req_ptr: *const u8, req_len: usize, out_ptr: *mut u8, out_cap: i32) -> i32;
    /// `kv.get_many`: the length of the msgpack reply (buffer rule), or an error.
    pub fn get_many(store: i32, req_ptr: *const u8, req_len: usize, out_ptr: *mut u8, out_cap: i32) -> i32;
    /// `kv.set_many`: `0` or an error.
    pub fn set_many(store: i32, req_ptr: *const u8, req_len: usize, out_ptr: *mut u8, out_cap: i32) -> i32;
    /// `kv.delete_many`: how many keys existed, or an error.
    pub fn delete_many(store: i32, req_ptr: *const u8, req_len: usize, out_ptr: *mut u8, out_cap: i32) -> i32;
}

#[link(wasm_import_module = "host")]
extern "C" {
    /// `host.input`: the input's length (buffer rule).
    pub fn input(out_ptr: *mut u8, out_cap: i32) -> i32;
    /// `host.output`: `0`, or an error once the output passes the memory limit.
    pub fn output(ptr: *const u8, len: usize) -> i32;
    /// `host.log`: level 0 debug .. 3 error.
    pub fn log(level: i32, ptr: *const u8, len: usize);
}
