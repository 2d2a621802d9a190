/* Per-call overhead of the C ABI: ns per call of a no-op call (clip_version), of
 * the thread's last error (clip_error_last), of a failing call (NULL argument: the
 * error path with its message), and of clip_archive_info (JSON of an open
 * archive, freed). Prints one line per measure:
 *   bench-abi-c: <name> <ns>/call (<calls> calls)
 * Environment: CLIP_TEST_WORK (scratch), CLIP_TEST_LAYOUT (an OCI layout with tag
 * v1), both set by tests/c/run.sh --bench. */
#define _GNU_SOURCE
#include <clip.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static volatile size_t sink;

#define MEASURE(name, iterations, body)                                                   \
    do {                                                                                  \
        long n_ = (iterations), i_;                                                       \
        double t0_, best_ = 1e300;                                                        \
        int round_;                                                                       \
        for (round_ = 0; round_ < 5; round_++) {                                          \
            t0_ = now_ns();                                                               \
            for (i_ = 0; i_ < n_; i_++) { body; }                                         \
            if ((now_ns() - t0_) / n_ < best_) best_ = (now_ns() - t0_) / n_;             \
        }                                                                                 \
        printf("bench-abi-c: %-28s %10.1f ns/call (best of 5 x %ld calls)\n", name, best_, n_); \
    } while (0)

int main(void) {
    const char *work = getenv("CLIP_TEST_WORK"), *layout = getenv("CLIP_TEST_LAYOUT");
    char path[4096];
    clip_archive *a = NULL;
    clip_cancel *c = NULL;
    if (!work || !layout) {
        fprintf(stderr, "bench: CLIP_TEST_WORK and CLIP_TEST_LAYOUT must be set (run tests/c/run.sh --bench)\n");
        return 2;
    }
    snprintf(path, sizeof path, "%s/bench.clip", work);
    if (clip_index_layout(layout, "v1", path, NULL) != CLIP_OK || clip_archive_open(&a, path) != CLIP_OK) {
        fprintf(stderr, "bench: %s\n", clip_error_last()->message);
        return 1;
    }
    MEASURE("clip_version", 10000000, sink += (size_t)clip_version());
    MEASURE("clip_error_last", 10000000, sink += (size_t)clip_error_last()->code);
    if (clip_cancel_new(&c) != CLIP_OK) return 1;
    MEASURE("clip_cancel_is_cancelled", 10000000, sink += (size_t)clip_cancel_is_cancelled(c));
    MEASURE("failing call (NULL argument)", 1000000, sink += (size_t)clip_cancel_is_cancelled(NULL));
    MEASURE("clip_archive_info", 100000, {
        char *json = NULL;
        clip_archive_info(&json, a);
        sink += strlen(json);
        clip_string_free(json);
    });
    clip_archive_close(a);
    clip_cancel_free(c);
    return 0;
}
