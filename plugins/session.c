/* session: expiring session data in bucket "sessions". See plugins/README.md. */
#include "wasmkv.h"

/* Plugin statuses. */
#define SESSION_MISSING 1
#define MALFORMED_INPUT 2

#define PREFIX "session:"
#define PREFIX_LEN (sizeof PREFIX - 1)

static size_t find_space(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len && s[i] != ' ') i++;
    return i;
}

/* Reads the input and opens the bucket; *kv is the handle. */
static int32_t begin(int32_t *kv, const uint8_t **in, size_t *in_len) {
    wasmkv_reset();
    int32_t n = wasmkv_input(NULL, 0, in);
    if (n < 0) return n;
    *in_len = (size_t)n;
    *kv = wasmkv_open("sessions");
    return *kv < 0 ? *kv : 0;
}

/* Builds "session:<sid>" in the arena. */
static const char *session_key(const uint8_t *sid, size_t sid_len, size_t *key_len) {
    char *key = wasmkv_alloc(PREFIX_LEN + sid_len);
    if (!key) __builtin_trap();
    wasmkv_memcpy(key, PREFIX, PREFIX_LEN);
    wasmkv_memcpy(key + PREFIX_LEN, sid, sid_len);
    *key_len = PREFIX_LEN + sid_len;
    return key;
}

/* For fetch and end: the whole input is the sid, which is non-empty and has no space. */
static int32_t sid_key(const char **key, size_t *key_len, int32_t *kv) {
    const uint8_t *in;
    size_t len;
    int32_t rc = begin(kv, &in, &len);
    if (rc < 0) return rc;
    if (len == 0 || find_space(in, len) != len) return MALFORMED_INPUT;
    *key = session_key(in, len, key_len);
    return 0;
}

/* Input "<sid> <ttl_ms> <data...>"; without the second space the data is empty. */
WASMKV_EXPORT int32_t put(void) {
    int32_t kv;
    const uint8_t *in;
    size_t len;
    int32_t rc = begin(&kv, &in, &len);
    if (rc < 0) return rc;
    size_t sid_len = find_space(in, len);
    if (sid_len == 0 || sid_len == len) return MALFORMED_INPUT;
    const uint8_t *rest = in + sid_len + 1;
    size_t rest_len = len - sid_len - 1;
    size_t ttl_len = find_space(rest, rest_len);
    int64_t ttl;
    /* Digits only: wasmkv_parse_i64 alone would accept a sign. */
    if (ttl_len == 0 || rest[0] == '-' || !wasmkv_parse_i64(rest, ttl_len, &ttl) || ttl == 0)
        return MALFORMED_INPUT;
    /* The data starts after the space that ends the ttl, if there is one. */
    size_t data_start = ttl_len < rest_len ? ttl_len + 1 : rest_len;
    const uint8_t *data = rest + data_start;
    size_t data_len = rest_len - data_start;
    size_t key_len;
    const char *key = session_key(in, sid_len, &key_len);
    return wasmkv_set_with_ttl_n(kv, key, key_len, data, data_len, ttl);
}

WASMKV_EXPORT int32_t fetch(void) {
    const char *key;
    size_t key_len;
    int32_t kv;
    int32_t rc = sid_key(&key, &key_len, &kv);
    if (rc) return rc;
    /* Most sessions fit on the stack; larger ones go to the arena. */
    uint8_t buf[256];
    const uint8_t *data;
    int32_t n = wasmkv_get_n(kv, key, key_len, buf, sizeof buf, &data);
    if (n == WASMKV_NOT_FOUND) return SESSION_MISSING;
    return n < 0 ? n : wasmkv_output(data, (size_t)n);
}

WASMKV_EXPORT int32_t end(void) {
    const char *key;
    size_t key_len;
    int32_t kv;
    int32_t rc = sid_key(&key, &key_len, &kv);
    if (rc) return rc;
    rc = wasmkv_delete_n(kv, key, key_len);
    return rc < 0 ? rc : wasmkv_output(rc ? "1" : "0", 1);
}

/* Input: empty, or a <sid> to start from. Outputs "<sid> <data length>\n" for
 * every live session from there on, in byte order of the sid, read with scans
 * (each page one snapshot) of 10 sessions a page. */
WASMKV_EXPORT int32_t all(void) {
    int32_t kv;
    const uint8_t *in;
    size_t len;
    int32_t rc = begin(&kv, &in, &len);
    if (rc < 0) return rc;
    if (find_space(in, len) != len) return MALFORMED_INPUT;
    wasmkv_scan sc;
    wasmkv_scan_begin(&sc, kv, PREFIX, 10);
    if (len) {
        /* The SDK takes bounds as C strings: "session:<sid>" and its NUL. */
        size_t key_len;
        char *start = (char *)session_key(in, len, &key_len);
        char *z = wasmkv_alloc(key_len + 1);
        if (!z) __builtin_trap();
        wasmkv_memcpy(z, start, key_len);
        z[key_len] = 0;
        sc.start = z;
    }
    const uint8_t *key, *value;
    size_t key_len, value_len;
    while ((rc = wasmkv_scan_next_page(&sc)) > 0) {
        while (wasmkv_scan_next_item(&sc, &key, &key_len, &value, &value_len)) {
            char digits[24];
            wasmkv_output(key + PREFIX_LEN, key_len - PREFIX_LEN);
            digits[0] = ' ';
            int n = wasmkv_fmt_i64(digits + 1, (int64_t)value_len);
            digits[n + 1] = '\n';
            wasmkv_output(digits, (size_t)n + 2);
        }
    }
    return rc;
}
