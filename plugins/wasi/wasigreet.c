/* wasigreet: a WASI reactor (libc: printf, malloc, snprintf) over the raw kv imports.
 * Loaded with wasi=True. See plugins/README.md. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define IMPORT(module, name) __attribute__((import_module(module), import_name(name)))
IMPORT("kv", "open") int32_t kv_open(const char *name, int32_t name_len);
IMPORT("kv", "increment") int32_t kv_increment(int32_t store, const char *key, int32_t key_len, int64_t delta,
                                               int64_t *out);
IMPORT("host", "input") int32_t host_input(void *out, int32_t out_cap);
IMPORT("host", "output") int32_t host_output(const void *data, int32_t len);

static int initialized;

/* Runs once per instance, before any call (the reactor's _initialize calls constructors).
 * stdout is not a terminal, so libc would buffer it fully: each line should reach the log
 * during the call that printed it. */
__attribute__((constructor)) static void init(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    initialized = 1;
}

/* Input: a name. Counts greetings per name in bucket "default" under greeted:<name>, prints a
 * line to stdout (the plugin's log), and outputs "hello <name> #<n>". */
__attribute__((export_name("greet"))) int32_t greet(void) {
    int32_t len = host_input(NULL, 0);
    if (len < 0) return len;
    char *name = malloc((size_t)len + 1);
    if (!name) return 4;
    host_input(name, len);
    name[len] = 0;
    int32_t kv = kv_open("default", 7);
    if (kv < 0) return kv;
    size_t key_len = strlen("greeted:") + (size_t)len;
    char *key = malloc(key_len + 1);
    if (!key) return 4;
    snprintf(key, key_len + 1, "greeted:%s", name);
    int64_t n;
    int32_t rc = kv_increment(kv, key, (int32_t)key_len, 1, &n);
    if (rc < 0) return rc;
    printf("greeting %s for the %lld%s time\n", name, (long long)n, n == 1 ? "st" : "th");
    fprintf(stderr, "initialized=%d\n", initialized);
    char out[600];
    int out_len = snprintf(out, sizeof out, "hello %s #%lld", name, (long long)n);
    free(key);
    free(name);
    return host_output(out, out_len < (int)sizeof out ? out_len : (int)sizeof out - 1);
}

/* Tries to read a file: WASI here has no directories, so it must fail. Outputs "no file" or the text. */
__attribute__((export_name("peek"))) int32_t peek(void) {
    FILE *f = fopen("/etc/passwd", "r");
    if (!f) return host_output("no file", 7);
    char buf[64];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return host_output(buf, (int32_t)n);
}

/* Sleeps for the number of milliseconds in the input (nanosleep: WASI's poll_oneoff). */
__attribute__((export_name("nap"))) int32_t nap(void) {
    char buf[24] = {0};
    int32_t len = host_input(buf, sizeof buf - 1);
    if (len < 0 || len >= (int32_t)sizeof buf) return 2;
    long ms = atol(buf);
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    return host_output("awake", 5);
}

/* Prints many lines to stdout: the log is capped per call. */
__attribute__((export_name("shout"))) int32_t shout(void) {
    for (int i = 0; i < 5000; i++) printf("line %d \x1b[2J\n", i);
    return 0;
}
