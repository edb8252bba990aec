/*
 * wasmkv.h: header-only C SDK for wasmkv plugins. The contract is abi/ABI.md.
 *
 * Freestanding: no libc, build with -nostdlib. Copies compile to the wasm
 * bulk-memory instructions, which zig cc's default wasm32 CPU enables; with
 * -mcpu=mvp the compiler would call a memcpy that does not exist.
 *
 *   python -m ziglang cc --target=wasm32-freestanding -nostdlib -Oz -Wl,--no-entry -Wl,--export-dynamic -Wl,--strip-all -I "$(wasmkv sdk c)" -o hit.wasm hit.c
 *
 * Conventions:
 * - Functions return an int32_t: >= 0 is a result, < 0 a WASMKV_* status code.
 * - Keys are given as NUL-terminated strings (a valid key never contains NUL,
 *   since control characters are rejected) or, in the *_n variants, as
 *   pointer + length, for keys that were not built as C strings.
 * - Variable-size results (get, input, list pages, get_many) follow the buffer
 *   rule: the wrappers first try the caller's buffer and otherwise place the
 *   result in the arena, retrying until it fits.
 * - The arena is a bump allocator over the memory past __heap_base, grown with
 *   memory.grow. Instances are reused across calls, so call wasmkv_reset() at
 *   the start of every entry point. If memory cannot grow (the host's memory
 *   ceiling) the wrappers trap; wasmkv_alloc returns NULL instead.
 */
#ifndef WASMKV_H
#define WASMKV_H

#include <stddef.h>
#include <stdint.h>

#define WASMKV_EXPORT __attribute__((visibility("default")))

/* Status codes (abi.Status). */
#define WASMKV_OK 0
#define WASMKV_NOT_FOUND (-1)
#define WASMKV_INVALID_KEY (-2)
#define WASMKV_VALUE_TOO_LARGE (-3)
#define WASMKV_QUOTA_EXCEEDED (-4)
#define WASMKV_NOT_A_NUMBER (-5)
#define WASMKV_INTEGER_OVERFLOW (-6)
#define WASMKV_ACCESS_DENIED (-7)
#define WASMKV_BAD_HANDLE (-8)
#define WASMKV_BAD_POINTER (-9)
#define WASMKV_RATE_LIMITED (-10)
#define WASMKV_BACKEND_UNAVAILABLE (-11)
#define WASMKV_INVALID_ARGUMENT (-12)

/* Levels for wasmkv_log (abi.LogLevel). */
#define WASMKV_LOG_DEBUG 0
#define WASMKV_LOG_INFO 1
#define WASMKV_LOG_WARNING 2
#define WASMKV_LOG_ERROR 3

/* expected_len for wasmkv_compare_and_swap: swap only if the key is absent. */
#define WASMKV_ABSENT (-1)

/* Largest list_keys limit and batch request (abi.LIST_MAX_LIMIT, BATCH_MAX_ITEMS). */
#define WASMKV_LIST_MAX_LIMIT 1000
#define WASMKV_BATCH_MAX_ITEMS 1000

/* ---- Raw imports, exactly as in ABI.md ---------------------------------- */

#define WASMKV__IMPORT(module, name) __attribute__((import_module(module), import_name(name)))

WASMKV__IMPORT("kv", "open")
int32_t wasmkv_raw_open(const char *name, int32_t name_len);
WASMKV__IMPORT("kv", "get")
int32_t wasmkv_raw_get(int32_t store, const char *key, int32_t key_len, void *out, int32_t out_cap);
WASMKV__IMPORT("kv", "set")
int32_t wasmkv_raw_set(int32_t store, const char *key, int32_t key_len, const void *val, int32_t val_len);
WASMKV__IMPORT("kv", "set_with_ttl")
int32_t wasmkv_raw_set_with_ttl(int32_t store, const char *key, int32_t key_len, const void *val,
                                int32_t val_len, int64_t ttl_ms);
WASMKV__IMPORT("kv", "delete")
int32_t wasmkv_raw_delete(int32_t store, const char *key, int32_t key_len);
WASMKV__IMPORT("kv", "exists")
int32_t wasmkv_raw_exists(int32_t store, const char *key, int32_t key_len);
WASMKV__IMPORT("kv", "increment")
int32_t wasmkv_raw_increment(int32_t store, const char *key, int32_t key_len, int64_t delta, int64_t *out);
WASMKV__IMPORT("kv", "compare_and_swap")
int32_t wasmkv_raw_compare_and_swap(int32_t store, const char *key, int32_t key_len, const void *exp,
                                    int32_t exp_len, const void *val, int32_t val_len);
WASMKV__IMPORT("kv", "list_keys")
int32_t wasmkv_raw_list_keys(int32_t store, const char *prefix, int32_t prefix_len, const void *cursor,
                             int32_t cursor_len, int32_t limit, void *out, int32_t out_cap);
WASMKV__IMPORT("kv", "scan")
int32_t wasmkv_raw_scan(int32_t store, const void *req, int32_t req_len, void *out, int32_t out_cap);
WASMKV__IMPORT("kv", "get_many")
int32_t wasmkv_raw_get_many(int32_t store, const void *req, int32_t req_len, void *out, int32_t out_cap);
WASMKV__IMPORT("kv", "set_many")
int32_t wasmkv_raw_set_many(int32_t store, const void *req, int32_t req_len, void *out, int32_t out_cap);
WASMKV__IMPORT("kv", "delete_many")
int32_t wasmkv_raw_delete_many(int32_t store, const void *req, int32_t req_len, void *out, int32_t out_cap);

WASMKV__IMPORT("host", "input")
int32_t wasmkv_raw_input(void *out, int32_t out_cap);
WASMKV__IMPORT("host", "output")
int32_t wasmkv_raw_output(const void *data, int32_t len);
WASMKV__IMPORT("host", "log")
void wasmkv_raw_log(int32_t level, const char *text, int32_t len);

/* ---- Memory helpers ------------------------------------------------------ */

static inline size_t wasmkv_strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

static inline void *wasmkv_memcpy(void *dst, const void *src, size_t n) {
    return __builtin_memcpy(dst, src, n);
}

static inline void *wasmkv_memmove(void *dst, const void *src, size_t n) {
    return __builtin_memmove(dst, src, n);
}

static inline int wasmkv_memeq(const void *a, const void *b, size_t n) {
    const uint8_t *x = (const uint8_t *)a, *y = (const uint8_t *)b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i]) return 0;
    return 1;
}

/* ---- Arena --------------------------------------------------------------- */

extern unsigned char __heap_base;

/* Weak so that every translation unit including this header shares one
 * arena; hidden so that --export-dynamic does not export it. */
__attribute__((weak, visibility("hidden"))) uintptr_t wasmkv__arena_top;

static inline uintptr_t wasmkv__top(void) {
    if (!wasmkv__arena_top) wasmkv__arena_top = (uintptr_t)&__heap_base;
    return wasmkv__arena_top;
}

static inline uint64_t wasmkv__memory_end(void) {
    return (uint64_t)__builtin_wasm_memory_size(0) << 16;
}

/* Bytes between the arena top and the end of memory. */
static inline size_t wasmkv__free(void) {
    return (size_t)(wasmkv__memory_end() - wasmkv__top());
}

/* Grows memory until at least n bytes are free above the arena top. */
static inline int wasmkv__reserve(size_t n) {
    uint64_t need = (uint64_t)wasmkv__top() + n, end = wasmkv__memory_end();
    if (need <= end) return 1;
    return __builtin_wasm_memory_grow(0, (size_t)((need - end + 0xFFFF) >> 16)) != (size_t)-1;
}

/* Frees everything the arena handed out (call it first in each entry point). */
static inline void wasmkv_reset(void) {
    wasmkv__arena_top = (uintptr_t)&__heap_base;
}

/* n bytes, 8-byte aligned, valid until wasmkv_reset(); NULL if memory cannot grow. */
static inline void *wasmkv_alloc(size_t n) {
    wasmkv__arena_top = (wasmkv__top() + 7) & ~(uintptr_t)7;
    if (!wasmkv__reserve(n)) return NULL;
    void *p = (void *)wasmkv__arena_top;
    wasmkv__arena_top += n;
    return p;
}

/* ---- Buffer rule --------------------------------------------------------- */

/* One call of a variable-size import with a given output buffer. */
typedef int32_t (*wasmkv__fill_fn)(const void *ctx, void *out, int32_t cap);

/* Capacities are i32 in the ABI; a larger buffer is offered as INT32_MAX. */
static inline int32_t wasmkv__cap(size_t cap) {
    return cap > INT32_MAX ? INT32_MAX : (int32_t)cap;
}

/* Fills into the free arena space, growing it to the reported length and
 * retrying until the result fits (the data may grow between calls). */
static inline int32_t wasmkv__fill_arena(wasmkv__fill_fn fill, const void *ctx, size_t hint,
                                         const uint8_t **out) {
    for (;;) {
        if (!wasmkv__reserve(hint)) __builtin_trap();
        uint8_t *p = (uint8_t *)wasmkv__top();
        int32_t n = fill(ctx, p, wasmkv__cap(wasmkv__free()));
        if (n < 0) return n;
        if ((size_t)n <= wasmkv__free()) {
            wasmkv__arena_top += (size_t)n;
            *out = p;
            return n;
        }
        hint = (size_t)n;
    }
}

/* Tries buf first (skipped when cap is 0), then the arena. */
static inline int32_t wasmkv__fetch(wasmkv__fill_fn fill, const void *ctx, void *buf, size_t cap,
                                    const uint8_t **out) {
    if (cap == 0) return wasmkv__fill_arena(fill, ctx, 0, out);
    int32_t n = fill(ctx, buf, wasmkv__cap(cap));
    if (n >= 0 && (size_t)n <= cap) {
        *out = (const uint8_t *)buf;
        return n;
    }
    return n < 0 ? n : wasmkv__fill_arena(fill, ctx, (size_t)n, out);
}

/* ---- Host ---------------------------------------------------------------- */

static inline int32_t wasmkv__input_fill(const void *ctx, void *out, int32_t cap) {
    (void)ctx;
    return wasmkv_raw_input(out, cap);
}

/* The call's input: its length, with *data pointing into buf or the arena. */
static inline int32_t wasmkv_input(void *buf, size_t cap, const uint8_t **data) {
    return wasmkv__fetch(wasmkv__input_fill, NULL, buf, cap, data);
}

/* Appends to the call's output: 0, WASMKV_BAD_POINTER, or WASMKV_INVALID_ARGUMENT once one
   call's output would pass the plugin's memory_bytes limit. */
static inline int32_t wasmkv_output(const void *data, size_t len) {
    return wasmkv_raw_output(data, (int32_t)len);
}

static inline void wasmkv_log_n(int32_t level, const char *text, size_t len) {
    wasmkv_raw_log(level, text, (int32_t)len);
}

static inline void wasmkv_log(int32_t level, const char *text) {
    wasmkv_log_n(level, text, wasmkv_strlen(text));
}

/* ---- Decimal ------------------------------------------------------------- */

/* Writes n in decimal (at most 20 bytes, no NUL) and returns the length. */
static inline int wasmkv_fmt_i64(char *buf, int64_t n) {
    char tmp[20];
    uint64_t u = n < 0 ? 0 - (uint64_t)n : (uint64_t)n;
    int len = 0, i = 0;
    do {
        tmp[i++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (n < 0) buf[len++] = '-';
    while (i) buf[len++] = tmp[--i];
    return len;
}

/* Parses an optional '-' and 1+ digits that fit an int64_t: 1 on success, else 0. */
static inline int wasmkv_parse_i64(const void *text, size_t len, int64_t *out) {
    const uint8_t *s = (const uint8_t *)text;
    int neg = len > 0 && s[0] == '-';
    size_t i = (size_t)neg;
    if (i == len) return 0;
    uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX, v = 0;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (limit - d) / 10) return 0;
        v = v * 10 + d;
    }
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 1;
}

/* ---- Store --------------------------------------------------------------- */

/* Opens a bucket: a store handle >= 0, or an error. */
static inline int32_t wasmkv_open(const char *name) {
    return wasmkv_raw_open(name, (int32_t)wasmkv_strlen(name));
}

typedef struct {
    int32_t store;
    const char *key;
    int32_t key_len;
} wasmkv__get_ctx;

static inline int32_t wasmkv__get_fill(const void *ctx, void *out, int32_t cap) {
    const wasmkv__get_ctx *c = (const wasmkv__get_ctx *)ctx;
    return wasmkv_raw_get(c->store, c->key, c->key_len, out, cap);
}

/* The value's length, with *value pointing into buf or the arena;
 * WASMKV_NOT_FOUND if the key is missing. */
static inline int32_t wasmkv_get_n(int32_t store, const char *key, size_t key_len, void *buf, size_t cap,
                                   const uint8_t **value) {
    wasmkv__get_ctx ctx = {store, key, (int32_t)key_len};
    return wasmkv__fetch(wasmkv__get_fill, &ctx, buf, cap, value);
}

static inline int32_t wasmkv_get(int32_t store, const char *key, void *buf, size_t cap, const uint8_t **value) {
    return wasmkv_get_n(store, key, wasmkv_strlen(key), buf, cap, value);
}

static inline int32_t wasmkv_set_n(int32_t store, const char *key, size_t key_len, const void *val, size_t len) {
    return wasmkv_raw_set(store, key, (int32_t)key_len, val, (int32_t)len);
}

static inline int32_t wasmkv_set(int32_t store, const char *key, const void *val, size_t len) {
    return wasmkv_set_n(store, key, wasmkv_strlen(key), val, len);
}

/* ttl_ms must be > 0. */
static inline int32_t wasmkv_set_with_ttl_n(int32_t store, const char *key, size_t key_len, const void *val,
                                            size_t len, int64_t ttl_ms) {
    return wasmkv_raw_set_with_ttl(store, key, (int32_t)key_len, val, (int32_t)len, ttl_ms);
}

static inline int32_t wasmkv_set_with_ttl(int32_t store, const char *key, const void *val, size_t len,
                                          int64_t ttl_ms) {
    return wasmkv_set_with_ttl_n(store, key, wasmkv_strlen(key), val, len, ttl_ms);
}

/* 1 if the key existed, 0 if not. */
static inline int32_t wasmkv_delete_n(int32_t store, const char *key, size_t key_len) {
    return wasmkv_raw_delete(store, key, (int32_t)key_len);
}

static inline int32_t wasmkv_delete(int32_t store, const char *key) {
    return wasmkv_delete_n(store, key, wasmkv_strlen(key));
}

/* 1 or 0. */
static inline int32_t wasmkv_exists_n(int32_t store, const char *key, size_t key_len) {
    return wasmkv_raw_exists(store, key, (int32_t)key_len);
}

static inline int32_t wasmkv_exists(int32_t store, const char *key) {
    return wasmkv_exists_n(store, key, wasmkv_strlen(key));
}

/* Adds delta (a missing key counts as 0) and stores the new value in *value. */
static inline int32_t wasmkv_increment_n(int32_t store, const char *key, size_t key_len, int64_t delta,
                                         int64_t *value) {
    return wasmkv_raw_increment(store, key, (int32_t)key_len, delta, value);
}

static inline int32_t wasmkv_increment(int32_t store, const char *key, int64_t delta, int64_t *value) {
    return wasmkv_increment_n(store, key, wasmkv_strlen(key), delta, value);
}

/* 1 if swapped, 0 on mismatch. expected_len WASMKV_ABSENT: only if the key is absent. */
static inline int32_t wasmkv_compare_and_swap_n(int32_t store, const char *key, size_t key_len,
                                                const void *expected, int32_t expected_len, const void *val,
                                                size_t len) {
    return wasmkv_raw_compare_and_swap(store, key, (int32_t)key_len, expected, expected_len, val, (int32_t)len);
}

static inline int32_t wasmkv_compare_and_swap(int32_t store, const char *key, const void *expected,
                                              int32_t expected_len, const void *val, size_t len) {
    return wasmkv_compare_and_swap_n(store, key, wasmkv_strlen(key), expected, expected_len, val, len);
}

/* ---- msgpack ------------------------------------------------------------- */

/* Writer over a fixed buffer. It counts every byte but stores only while
 * they fit, so a pass with (NULL, 0) measures the request; it is complete
 * when wasmkv_writer_ok(). */
typedef struct {
    uint8_t *buf;
    size_t cap;
    size_t len;
} wasmkv_writer;

static inline void wasmkv_writer_init(wasmkv_writer *w, void *buf, size_t cap) {
    w->buf = (uint8_t *)buf;
    w->cap = cap;
    w->len = 0;
}

static inline int wasmkv_writer_ok(const wasmkv_writer *w) {
    return w->len <= w->cap;
}

static inline void wasmkv__put(wasmkv_writer *w, const void *data, size_t n) {
    if (w->len + n <= w->cap) wasmkv_memcpy(w->buf + w->len, data, n);
    w->len += n;
}

/* A header: the fix form (base | n) when n < fix_limit, else the 8-, 16- or
 * 32-bit length form (tag8 0 when there is no 8-bit form). */
static inline void wasmkv__header(wasmkv_writer *w, uint8_t fix_base, uint32_t fix_limit, uint8_t tag8,
                                  uint8_t tag16, uint8_t tag32, uint32_t n) {
    uint8_t h[5];
    size_t len;
    if (n < fix_limit) {
        h[0] = (uint8_t)(fix_base | n);
        len = 1;
    } else if (tag8 && n <= 0xFF) {
        h[0] = tag8;
        h[1] = (uint8_t)n;
        len = 2;
    } else if (n <= 0xFFFF) {
        h[0] = tag16;
        h[1] = (uint8_t)(n >> 8);
        h[2] = (uint8_t)n;
        len = 3;
    } else {
        h[0] = tag32;
        h[1] = (uint8_t)(n >> 24);
        h[2] = (uint8_t)(n >> 16);
        h[3] = (uint8_t)(n >> 8);
        h[4] = (uint8_t)n;
        len = 5;
    }
    wasmkv__put(w, h, len);
}

static inline void wasmkv_write_array(wasmkv_writer *w, uint32_t n) {
    wasmkv__header(w, 0x90, 16, 0, 0xdc, 0xdd, n);
}

static inline void wasmkv_write_map(wasmkv_writer *w, uint32_t n) {
    wasmkv__header(w, 0x80, 16, 0, 0xde, 0xdf, n);
}

static inline void wasmkv_write_str(wasmkv_writer *w, const void *s, size_t n) {
    wasmkv__header(w, 0xa0, 32, 0xd9, 0xda, 0xdb, (uint32_t)n);
    wasmkv__put(w, s, n);
}

static inline void wasmkv_write_bin(wasmkv_writer *w, const void *b, size_t n) {
    wasmkv__header(w, 0, 0, 0xc4, 0xc5, 0xc6, (uint32_t)n);
    wasmkv__put(w, b, n);
}

static inline void wasmkv_write_nil(wasmkv_writer *w) {
    wasmkv__put(w, "\xc0", 1);
}

/* Reader. Each read_* consumes one value of its type and returns 1, or
 * returns 0 and consumes nothing if the next value has another type or is
 * truncated. */
typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} wasmkv_reader;

static inline void wasmkv_reader_init(wasmkv_reader *r, const void *data, size_t len) {
    r->p = (const uint8_t *)data;
    r->end = r->p + len;
}

enum { WASMKV__MP_SCALAR, WASMKV__MP_NIL, WASMKV__MP_STR, WASMKV__MP_BIN, WASMKV__MP_ARRAY, WASMKV__MP_MAP };

typedef struct {
    int kind;
    uint32_t n;           /* bytes for str/bin, elements for array/map */
    const uint8_t *data;  /* str/bin payload */
    const uint8_t *next;  /* where the following value starts */
} wasmkv__item;

static inline uint32_t wasmkv__be(const uint8_t *p, int bytes) {
    uint32_t v = 0;
    for (int i = 0; i < bytes; i++) v = v << 8 | p[i];
    return v;
}

/* Decodes the header at r->p (and locates the payload of str/bin/scalars). */
static inline int wasmkv__peek(const wasmkv_reader *r, wasmkv__item *it) {
    const uint8_t *p = r->p;
    if (p >= r->end) return 0;
    uint8_t t = *p++;
    int len_bytes = 0;  /* size of a length field that follows the tag */
    uint32_t skip = 0;  /* payload bytes after the header, for scalars and ext */
    it->kind = WASMKV__MP_SCALAR;
    it->n = 0;
    if (t <= 0x7f || t >= 0xe0 || t == 0xc2 || t == 0xc3) {
        /* fixint or bool: the tag is the whole value */
    } else if (t <= 0x8f) {
        it->kind = WASMKV__MP_MAP;
        it->n = t & 0x0f;
    } else if (t <= 0x9f) {
        it->kind = WASMKV__MP_ARRAY;
        it->n = t & 0x0f;
    } else if (t <= 0xbf) {
        it->kind = WASMKV__MP_STR;
        it->n = t & 0x1f;
    } else if (t == 0xc0) {
        it->kind = WASMKV__MP_NIL;
    } else if (t >= 0xc4 && t <= 0xc6) {
        it->kind = WASMKV__MP_BIN;
        len_bytes = 1 << (t - 0xc4);
    } else if (t >= 0xc7 && t <= 0xc9) {
        len_bytes = 1 << (t - 0xc7);
        skip = 1; /* ext: length, type byte, data */
    } else if (t == 0xca || t == 0xcb) {
        skip = t == 0xca ? 4 : 8;
    } else if (t >= 0xcc && t <= 0xd3) {
        skip = 1u << ((t - 0xcc) & 3);
    } else if (t >= 0xd4 && t <= 0xd8) {
        skip = 1 + (1u << (t - 0xd4)); /* fixext: type byte, data */
    } else if (t >= 0xd9 && t <= 0xdb) {
        it->kind = WASMKV__MP_STR;
        len_bytes = 1 << (t - 0xd9);
    } else if (t == 0xdc || t == 0xdd) {
        it->kind = WASMKV__MP_ARRAY;
        len_bytes = t == 0xdc ? 2 : 4;
    } else if (t == 0xde || t == 0xdf) {
        it->kind = WASMKV__MP_MAP;
        len_bytes = t == 0xde ? 2 : 4;
    } else {
        return 0; /* 0xc1 is never used */
    }
    if ((size_t)(r->end - p) < (size_t)len_bytes) return 0;
    if (len_bytes) {
        uint32_t n = wasmkv__be(p, len_bytes);
        p += len_bytes;
        if (it->kind == WASMKV__MP_SCALAR) skip += n;
        else it->n = n;
    }
    if (it->kind == WASMKV__MP_STR || it->kind == WASMKV__MP_BIN) skip = it->n;
    if ((size_t)(r->end - p) < skip) return 0;
    it->data = p;
    it->next = p + skip;
    return 1;
}

static inline int wasmkv__read(wasmkv_reader *r, int kind, wasmkv__item *it) {
    if (!wasmkv__peek(r, it) || it->kind != kind) return 0;
    r->p = it->next;
    return 1;
}

static inline int wasmkv_read_nil(wasmkv_reader *r) {
    wasmkv__item it;
    return wasmkv__read(r, WASMKV__MP_NIL, &it);
}

static inline int wasmkv_read_array(wasmkv_reader *r, uint32_t *n) {
    wasmkv__item it;
    if (!wasmkv__read(r, WASMKV__MP_ARRAY, &it)) return 0;
    *n = it.n;
    return 1;
}

static inline int wasmkv_read_map(wasmkv_reader *r, uint32_t *n) {
    wasmkv__item it;
    if (!wasmkv__read(r, WASMKV__MP_MAP, &it)) return 0;
    *n = it.n;
    return 1;
}

static inline int wasmkv_read_str(wasmkv_reader *r, const uint8_t **s, size_t *n) {
    wasmkv__item it;
    if (!wasmkv__read(r, WASMKV__MP_STR, &it)) return 0;
    *s = it.data;
    *n = it.n;
    return 1;
}

static inline int wasmkv_read_bin(wasmkv_reader *r, const uint8_t **b, size_t *n) {
    wasmkv__item it;
    if (!wasmkv__read(r, WASMKV__MP_BIN, &it)) return 0;
    *b = it.data;
    *n = it.n;
    return 1;
}

/* Skips one value, nested arrays and maps included: 1, or 0 if malformed. */
static inline int wasmkv_skip(wasmkv_reader *r) {
    wasmkv_reader t = *r;
    uint64_t pending = 1;
    while (pending) {
        wasmkv__item it;
        if (!wasmkv__peek(&t, &it)) return 0;
        t.p = it.next;
        pending--;
        if (it.kind == WASMKV__MP_ARRAY) pending += it.n;
        if (it.kind == WASMKV__MP_MAP) pending += 2 * (uint64_t)it.n;
    }
    *r = t;
    return 1;
}

static inline int wasmkv__str_is(const uint8_t *s, size_t n, const char *lit) {
    return n == wasmkv_strlen(lit) && wasmkv_memeq(s, lit, n);
}

/* ---- Batches --------------------------------------------------------------
 * Requests are msgpack built with wasmkv_writer: get_many and delete_many
 * take an array of str keys, set_many a map {str key: bin value}. */

typedef struct {
    int32_t store;
    const void *req;
    int32_t req_len;
} wasmkv__batch_ctx;

static inline int32_t wasmkv__get_many_fill(const void *ctx, void *out, int32_t cap) {
    const wasmkv__batch_ctx *c = (const wasmkv__batch_ctx *)ctx;
    return wasmkv_raw_get_many(c->store, c->req, c->req_len, out, cap);
}

/* The reply's length, with *reply (an array of bin or nil, one per key, in
 * request order) pointing into buf or the arena. */
static inline int32_t wasmkv_get_many(int32_t store, const void *req, size_t req_len, void *buf, size_t cap,
                                      const uint8_t **reply) {
    wasmkv__batch_ctx ctx = {store, req, (int32_t)req_len};
    return wasmkv__fetch(wasmkv__get_many_fill, &ctx, buf, cap, reply);
}

/* 0; all entries are written or none. */
static inline int32_t wasmkv_set_many(int32_t store, const void *req, size_t req_len) {
    return wasmkv_raw_set_many(store, req, (int32_t)req_len, NULL, 0);
}

/* The number of keys that existed. */
static inline int32_t wasmkv_delete_many(int32_t store, const void *req, size_t req_len) {
    return wasmkv_raw_delete_many(store, req, (int32_t)req_len, NULL, 0);
}

/* ---- Listing --------------------------------------------------------------
 *   wasmkv_list l;
 *   wasmkv_list_begin(&l, kv, "user:", 100);
 *   while ((rc = wasmkv_list_next_page(&l)) > 0)
 *       while (wasmkv_list_next_key(&l, &key, &key_len)) ...;
 *   if (rc < 0) return rc;
 * A page's keys stay valid until the next wasmkv_list_next_page; when the page
 * is still the newest arena allocation its space is reused for the next one. */

typedef struct {
    int32_t store;
    const char *prefix;
    int32_t prefix_len;
    int32_t limit;
    const uint8_t *cursor; /* NULL before the first page */
    int32_t cursor_len;
    int done;
    uint8_t *page;     /* the arena block holding the current page */
    uintptr_t page_end;
    wasmkv_reader keys; /* the page's keys not yet taken */
    uint32_t keys_left;
} wasmkv_list;

static inline int32_t wasmkv__list_fill(const void *ctx, void *out, int32_t cap) {
    const wasmkv_list *l = (const wasmkv_list *)ctx;
    return wasmkv_raw_list_keys(l->store, l->prefix, l->prefix_len, l->cursor, l->cursor_len, l->limit, out, cap);
}

/* limit: keys per page, 1..WASMKV_LIST_MAX_LIMIT. */
static inline void wasmkv_list_begin(wasmkv_list *l, int32_t store, const char *prefix, int32_t limit) {
    *l = (wasmkv_list){0};
    l->store = store;
    l->prefix = prefix;
    l->prefix_len = (int32_t)wasmkv_strlen(prefix);
    l->limit = limit;
}

/* Fetches the next page: 1 (its keys are then available), 0 when the listing
 * is complete, or an error. A malformed reply is a host bug and traps. */
static inline int32_t wasmkv_list_next_page(wasmkv_list *l) {
    if (l->done) return 0;
    if (l->page && l->page_end == wasmkv__top()) {
        /* Keep only the cursor; the next page lands right after it. */
        wasmkv_memmove(l->page, l->cursor, (size_t)l->cursor_len);
        l->cursor = l->page;
        wasmkv__arena_top = (uintptr_t)l->page + (size_t)l->cursor_len;
    } else {
        l->page = (uint8_t *)wasmkv__top();
    }
    const uint8_t *reply;
    int32_t n = wasmkv__fill_arena(wasmkv__list_fill, l, 0, &reply);
    if (n < 0) return n;
    l->page_end = wasmkv__top();

    wasmkv_reader r;
    wasmkv_reader_init(&r, reply, (size_t)n);
    uint32_t fields;
    int have_keys = 0, have_cursor = 0;
    if (!wasmkv_read_map(&r, &fields)) __builtin_trap();
    while (fields--) {
        const uint8_t *name;
        size_t name_len;
        if (!wasmkv_read_str(&r, &name, &name_len)) __builtin_trap();
        if (wasmkv__str_is(name, name_len, "keys")) {
            if (!wasmkv_read_array(&r, &l->keys_left)) __builtin_trap();
            l->keys = r;
            for (uint32_t i = 0; i < l->keys_left; i++) {
                const uint8_t *k;
                size_t k_len;
                if (!wasmkv_read_str(&r, &k, &k_len)) __builtin_trap();
            }
            have_keys = 1;
        } else if (wasmkv__str_is(name, name_len, "cursor")) {
            size_t c_len;
            if (wasmkv_read_nil(&r)) l->done = 1;
            else if (!wasmkv_read_str(&r, &l->cursor, &c_len)) __builtin_trap();
            else l->cursor_len = (int32_t)c_len;
            have_cursor = 1;
        } else if (!wasmkv_skip(&r)) {
            __builtin_trap();
        }
    }
    if (!have_keys || !have_cursor) __builtin_trap();
    return 1;
}

/* The current page's next key: 1 with *key and *len set, or 0 when the page
 * has no more keys. */
static inline int wasmkv_list_next_key(wasmkv_list *l, const uint8_t **key, size_t *len) {
    if (!l->keys_left) return 0;
    l->keys_left--;
    return wasmkv_read_str(&l->keys, key, len);
}

/* ---- Scans ----------------------------------------------------------------
 *   wasmkv_scan sc;
 *   wasmkv_scan_begin(&sc, kv, "user:", 100);
 *   sc.start = "user:m";  (optional: inclusive lower bound; sc.end: exclusive upper bound)
 *   sc.reverse = 1;       (optional: descending order)
 *   while ((rc = wasmkv_scan_next_page(&sc)) > 0)
 *       while (wasmkv_scan_next_item(&sc, &key, &key_len, &value, &value_len)) ...;
 *   if (rc < 0) return rc;
 * Each page is read from one snapshot of the store. A page's keys and values
 * stay valid until the next wasmkv_scan_next_page; when the page is still the
 * newest arena allocation its space is reused for the next one. */

typedef struct {
    int32_t store;
    const char *prefix;
    const char *start; /* NULL: no lower bound */
    const char *end;   /* NULL: no upper bound */
    int32_t limit;
    int reverse;
    const uint8_t *cursor; /* NULL before the first page */
    int32_t cursor_len;
    int done;
    uint8_t *page; /* the arena block holding the cursor, request and reply */
    uintptr_t page_end;
    const uint8_t *req;
    int32_t req_len;
    wasmkv_reader items; /* the page's pairs not yet taken */
    uint32_t items_left;
} wasmkv_scan;

static inline int32_t wasmkv__scan_fill(const void *ctx, void *out, int32_t cap) {
    const wasmkv_scan *sc = (const wasmkv_scan *)ctx;
    return wasmkv_raw_scan(sc->store, sc->req, sc->req_len, out, cap);
}

/* limit: pairs per page, 1..WASMKV_LIST_MAX_LIMIT (a page also stops at 1 MiB). */
static inline void wasmkv_scan_begin(wasmkv_scan *sc, int32_t store, const char *prefix, int32_t limit) {
    *sc = (wasmkv_scan){0};
    sc->store = store;
    sc->prefix = prefix;
    sc->limit = limit;
}

static inline void wasmkv__scan_request(const wasmkv_scan *sc, wasmkv_writer *w) {
    wasmkv_write_map(w, 3 + (sc->start != NULL) + (sc->end != NULL) + (sc->cursor != NULL));
    wasmkv_write_str(w, "prefix", 6);
    wasmkv_write_str(w, sc->prefix, wasmkv_strlen(sc->prefix));
    if (sc->start) {
        wasmkv_write_str(w, "start", 5);
        wasmkv_write_str(w, sc->start, wasmkv_strlen(sc->start));
    }
    if (sc->end) {
        wasmkv_write_str(w, "end", 3);
        wasmkv_write_str(w, sc->end, wasmkv_strlen(sc->end));
    }
    if (sc->cursor) {
        wasmkv_write_str(w, "cursor", 6);
        wasmkv_write_str(w, sc->cursor, (size_t)sc->cursor_len);
    }
    wasmkv_write_str(w, "limit", 5);
    uint8_t limit[5] = {0xd2, (uint8_t)(sc->limit >> 24), (uint8_t)(sc->limit >> 16), (uint8_t)(sc->limit >> 8),
                        (uint8_t)sc->limit};
    wasmkv__put(w, limit, sizeof limit); /* int32 */
    wasmkv_write_str(w, "reverse", 7);
    wasmkv__put(w, sc->reverse ? "\xc3" : "\xc2", 1);
}

/* Fetches the next page: 1 (its pairs are then available), 0 when the scan
 * is complete, or an error. A malformed reply is a host bug and traps. */
static inline int32_t wasmkv_scan_next_page(wasmkv_scan *sc) {
    if (sc->done) return 0;
    if (sc->page && sc->page_end == wasmkv__top()) {
        /* Keep only the cursor; the next request and page land right after it. */
        wasmkv_memmove(sc->page, sc->cursor, (size_t)sc->cursor_len);
        sc->cursor = sc->page;
        wasmkv__arena_top = (uintptr_t)sc->page + (size_t)sc->cursor_len;
    } else {
        sc->page = (uint8_t *)wasmkv__top();
    }
    wasmkv_writer w;
    wasmkv_writer_init(&w, NULL, 0);
    wasmkv__scan_request(sc, &w); /* measure, then write */
    uint8_t *req = (uint8_t *)wasmkv_alloc(w.len);
    if (!req) __builtin_trap();
    wasmkv_writer_init(&w, req, w.len);
    wasmkv__scan_request(sc, &w);
    sc->req = req;
    sc->req_len = (int32_t)w.len;

    const uint8_t *reply;
    int32_t n = wasmkv__fill_arena(wasmkv__scan_fill, sc, 0, &reply);
    if (n < 0) return n;
    sc->page_end = wasmkv__top();

    wasmkv_reader r;
    wasmkv_reader_init(&r, reply, (size_t)n);
    uint32_t fields;
    int have_items = 0, have_cursor = 0;
    if (!wasmkv_read_map(&r, &fields)) __builtin_trap();
    while (fields--) {
        const uint8_t *name;
        size_t name_len;
        if (!wasmkv_read_str(&r, &name, &name_len)) __builtin_trap();
        if (wasmkv__str_is(name, name_len, "items")) {
            if (!wasmkv_read_array(&r, &sc->items_left)) __builtin_trap();
            sc->items = r;
            for (uint32_t i = 0; i < sc->items_left; i++) {
                uint32_t two;
                const uint8_t *k, *v;
                size_t k_len, v_len;
                if (!wasmkv_read_array(&r, &two) || two != 2 || !wasmkv_read_str(&r, &k, &k_len) ||
                    !wasmkv_read_bin(&r, &v, &v_len))
                    __builtin_trap();
            }
            have_items = 1;
        } else if (wasmkv__str_is(name, name_len, "cursor")) {
            size_t c_len;
            if (wasmkv_read_nil(&r)) sc->done = 1;
            else if (!wasmkv_read_str(&r, &sc->cursor, &c_len)) __builtin_trap();
            else sc->cursor_len = (int32_t)c_len;
            have_cursor = 1;
        } else if (!wasmkv_skip(&r)) {
            __builtin_trap();
        }
    }
    if (!have_items || !have_cursor) __builtin_trap();
    return 1;
}

/* The current page's next pair: 1 with *key, *key_len, *value and *value_len
 * set, or 0 when the page has no more pairs. */
static inline int wasmkv_scan_next_item(wasmkv_scan *sc, const uint8_t **key, size_t *key_len, const uint8_t **value,
                                        size_t *value_len) {
    if (!sc->items_left) return 0;
    sc->items_left--;
    uint32_t two;
    return wasmkv_read_array(&sc->items, &two) && wasmkv_read_str(&sc->items, key, key_len) &&
           wasmkv_read_bin(&sc->items, value, value_len);
}

#endif /* WASMKV_H */
