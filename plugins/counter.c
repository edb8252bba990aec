/* counter: named counters in bucket "default". See plugins/README.md. */
#include "wasmkv.h"

/* Opens the bucket and reads the counter name (the key) from the input. */
static int32_t begin(const uint8_t **key, size_t *key_len) {
    wasmkv_reset();
    int32_t kv = wasmkv_open("default");
    if (kv < 0) return kv;
    int32_t n = wasmkv_input(NULL, 0, key);
    if (n < 0) return n;
    *key_len = (size_t)n;
    if (n == 0) {
        *key = (const uint8_t *)"hits";
        *key_len = 4;
    }
    return kv;
}

static int32_t output_i64(int64_t n) {
    char buf[20];
    return wasmkv_output(buf, (size_t)wasmkv_fmt_i64(buf, n));
}

WASMKV_EXPORT int32_t hit(void) {
    const uint8_t *key;
    size_t key_len;
    int32_t kv = begin(&key, &key_len);
    if (kv < 0) return kv;
    int64_t n;
    int32_t rc = wasmkv_increment_n(kv, (const char *)key, key_len, 1, &n);
    return rc < 0 ? rc : output_i64(n);
}

WASMKV_EXPORT int32_t read(void) {
    const uint8_t *key;
    size_t key_len;
    int32_t kv = begin(&key, &key_len);
    if (kv < 0) return kv;
    /* Any int64 fits in 20 bytes; a longer value is still output whole. */
    char buf[20];
    const uint8_t *value;
    int32_t n = wasmkv_get_n(kv, (const char *)key, key_len, buf, sizeof buf, &value);
    if (n == WASMKV_NOT_FOUND) return wasmkv_output("0", 1);
    return n < 0 ? n : wasmkv_output(value, (size_t)n);
}

WASMKV_EXPORT int32_t reset(void) {
    const uint8_t *key;
    size_t key_len;
    int32_t kv = begin(&key, &key_len);
    if (kv < 0) return kv;
    int32_t rc = wasmkv_delete_n(kv, (const char *)key, key_len);
    return rc < 0 ? rc : wasmkv_output(rc ? "1" : "0", 1);
}
