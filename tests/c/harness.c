/* The C ABI test harness: every function of clip.h, success and error paths,
 * against a real OCI layout, a real registry and a real FUSE mount. Built by
 * tests/c/run.sh against the *installed* header and library (pkg-config), under
 * AddressSanitizer and again under valgrind.
 *
 * Usage: harness [test-name...]   (no names: all tests)
 * Environment (set by run.sh):
 *   CLIP_TEST_WORK       scratch directory
 *   CLIP_TEST_LAYOUT     OCI layout with tags "v1" (two layers, config set) and
 *                        "big" (one large layer, for cancellation)
 *   CLIP_TEST_REGISTRY   host:port of a registry requiring basic auth, holding
 *                        CLIP_TEST_REPO:v1 (the layout's v1)
 *   CLIP_TEST_REPO, CLIP_TEST_USER, CLIP_TEST_PASS, CLIP_TEST_AUTH_FILE (a docker
 *                        config.json with those credentials), CLIP_TEST_EMPTY_AUTH_FILE
 *   CLIP_TEST_ROOTFS     the files of v1, to compare mounted files with
 *   CLIP_TEST_CANCEL_LIMIT  seconds a cancelled call may take to return (default 1)
 * Output: one "ok"/"FAIL" line per check, a summary, exit status 1 on failure. */
#define _GNU_SOURCE
#include <clip.h>

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Checks                                                                   */
/* ------------------------------------------------------------------------ */

static int failures = 0;
static int checks = 0;
static const char *current = "";

#define CHECK(cond, ...) check_((cond), #cond, __FILE__, __LINE__, __VA_ARGS__)

static void check_(int ok, const char *expr, const char *file, int line, const char *fmt, ...) {
    va_list ap;
    checks++;
    if (ok) return;
    failures++;
    fprintf(stderr, "FAIL %s (%s:%d): %s: ", current, file, line, expr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static const char *last_message(void) { return clip_error_last()->message; }

/* The call returned `want`, the thread's last error has that code, and its message
 * contains `needle` (if not NULL). */
#define EXPECT_ERR(rc, want, needle) expect_err_((rc), (want), (needle), #rc, __LINE__)

static void expect_err_(int rc, int want, const char *needle, const char *expr, int line) {
    const clip_error *e = clip_error_last();
    checks++;
    if (rc != want || e->code != want || (needle && !strstr(e->message, needle))) {
        failures++;
        fprintf(stderr, "FAIL %s (line %d): %s returned %d (want %d); last error {%d, \"%s\"}%s%s%s\n",
                current, line, expr, rc, want, e->code, e->message, needle ? " should mention \"" : "",
                needle ? needle : "", needle ? "\"" : "");
    }
}

#define EXPECT_OK(rc) expect_ok_((rc), #rc, __LINE__)

static void expect_ok_(int rc, const char *expr, int line) {
    checks++;
    if (rc != CLIP_OK) {
        failures++;
        fprintf(stderr, "FAIL %s (line %d): %s returned %d: %s\n", current, line, expr, rc, last_message());
    }
}

static const char *env(const char *name) {
    const char *v = getenv(name);
    if (!v || !*v) {
        fprintf(stderr, "harness: %s is not set (run tests/c/run.sh)\n", name);
        exit(2);
    }
    return v;
}

static char *path_in(const char *dir, const char *name) {
    char *p = NULL;
    if (asprintf(&p, "%s/%s", dir, name) < 0) abort();
    return p;
}

static int exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Leftovers of an atomic write (a temp file next to the target). */
static int dir_has_prefix(const char *dir, const char *prefix) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "ls -A '%s' | grep -q '^%s'", dir, prefix);
    return system(cmd) == 0;
}

/* Reads a whole file (also /proc files, whose size is 0). Never a file on a clip
 * mount: see compare_file. */
static char *read_file(const char *p, size_t *len) {
    FILE *f = fopen(p, "rb");
    size_t cap = 4096, n = 0, got;
    char *buf;
    if (!f) return NULL;
    buf = malloc(cap + 1);
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
        }
    }
    fclose(f);
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

static void write_file(const char *p, const void *data, size_t len) {
    FILE *f = fopen(p, "wb");
    if (!f || fwrite(data, 1, len, f) != len) abort();
    fclose(f);
}

/* ------------------------------------------------------------------------ */
/* Fixture state                                                            */
/* ------------------------------------------------------------------------ */

static const char *work, *layout;
static char *v1_archive; /* indexed once by test_index_layout, used by later tests */

static char *info_json(const char *archive_path) {
    clip_archive *a = NULL;
    char *json = NULL;
    if (clip_archive_open(&a, archive_path) != CLIP_OK) return NULL;
    if (clip_archive_info(&json, a) != CLIP_OK) json = NULL;
    clip_archive_close(a);
    return json;
}

static void ensure_v1_archive(void) {
    if (v1_archive && exists(v1_archive)) return;
    free(v1_archive);
    v1_archive = path_in(work, "v1.clip");
    if (clip_index_layout(layout, "v1", v1_archive, NULL) != CLIP_OK) {
        fprintf(stderr, "harness: indexing %s:v1 failed: %s\n", layout, last_message());
        exit(1);
    }
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */
/* ------------------------------------------------------------------------ */

static void test_version(void) {
    CHECK(strcmp(clip_version(), CLIP_VERSION_STRING) == 0, "clip_version() = %s, header says %s", clip_version(),
          CLIP_VERSION_STRING);
    CHECK(clip_error_last() != NULL, "clip_error_last() is never NULL");
    clip_error_clear();
    CHECK(clip_error_last()->code == CLIP_OK && strcmp(last_message(), "no error") == 0, "cleared: {%d, %s}",
          clip_error_last()->code, last_message());
}

static void test_log_level(void) {
    EXPECT_OK(clip_set_log_level("debug"));
    EXPECT_OK(clip_set_log_level("WARNING"));
    EXPECT_OK(clip_set_log_level("off"));
    EXPECT_ERR(clip_set_log_level("loud"), CLIP_EINVALID, "\"loud\"");
    EXPECT_ERR(clip_set_log_level(NULL), CLIP_EINVALID, "level");
    EXPECT_ERR(clip_set_log_level("\xff\xfe"), CLIP_EINVALID, "UTF-8");
    EXPECT_OK(clip_set_log_level("warn"));
}

static void test_options_init(void) {
    clip_create_options c;
    clip_mount_options m;
    clip_registry_options r;
    memset(&c, 0xab, sizeof c);
    EXPECT_OK(clip_create_options_init(&c, CLIP_CREATE_OPTIONS_VERSION));
    CHECK(c.version == CLIP_CREATE_OPTIONS_VERSION && c.storage_ref == NULL && c.platform == NULL &&
              c.span_size == 0 && c.concurrency == 0 && c.progress_cb == NULL && c.registry == NULL &&
              c.cancel == NULL,
          "create defaults");
    memset(&m, 0xab, sizeof m);
    EXPECT_OK(clip_mount_options_init(&m, CLIP_MOUNT_OPTIONS_VERSION));
    CHECK(m.version == CLIP_MOUNT_OPTIONS_VERSION && m.cache_dir == NULL && m.layout == NULL &&
              m.read_observer == NULL && m.registry == NULL && m.allow_other == 0,
          "mount defaults");
    memset(&r, 0xab, sizeof r);
    EXPECT_OK(clip_registry_options_init(&r, CLIP_REGISTRY_OPTIONS_VERSION));
    CHECK(r.version == CLIP_REGISTRY_OPTIONS_VERSION && r.credential_kind == CLIP_CREDENTIAL_DEFAULT &&
              r.credential_cb == NULL && r.plain_http == NULL && r.plain_http_count == 0 &&
              r.timeout_ms == 30000 && r.attempts == 5,
          "registry defaults (timeout %u, attempts %u)", r.timeout_ms, r.attempts);

    EXPECT_ERR(clip_create_options_init(NULL, CLIP_CREATE_OPTIONS_VERSION), CLIP_EINVALID, "opts");
    EXPECT_ERR(clip_mount_options_init(NULL, CLIP_MOUNT_OPTIONS_VERSION), CLIP_EINVALID, "opts");
    EXPECT_ERR(clip_registry_options_init(NULL, CLIP_REGISTRY_OPTIONS_VERSION), CLIP_EINVALID, "opts");
    EXPECT_ERR(clip_create_options_init(&c, 0), CLIP_EVERSION, "clip_create_options version 0");
    EXPECT_ERR(clip_create_options_init(&c, CLIP_CREATE_OPTIONS_VERSION + 1), CLIP_EVERSION, "version");
    EXPECT_ERR(clip_mount_options_init(&m, 77), CLIP_EVERSION, "clip_mount_options version 77");
    EXPECT_ERR(clip_registry_options_init(&r, 77), CLIP_EVERSION, "clip_registry_options version 77");
}

static void test_null_args(void) {
    clip_archive *a = NULL;
    clip_mount *m = NULL;
    char *s = NULL;
    char *out = path_in(work, "null.clip");
    EXPECT_ERR(clip_index_layout(NULL, "v1", out, NULL), CLIP_EINVALID, "layout_dir");
    EXPECT_ERR(clip_index_layout(layout, "v1", NULL, NULL), CLIP_EINVALID, "out_path");
    EXPECT_ERR(clip_index_layout("", "v1", out, NULL), CLIP_EINVALID, "layout_dir");
    EXPECT_ERR(clip_create_from_image(NULL, out, NULL), CLIP_EINVALID, "image_ref");
    EXPECT_ERR(clip_create_from_image("oci:/x", NULL, NULL), CLIP_EINVALID, "out_path");
    EXPECT_ERR(clip_archive_open(NULL, "x.clip"), CLIP_EINVALID, "out");
    EXPECT_ERR(clip_archive_open(&a, NULL), CLIP_EINVALID, "path");
    CHECK(a == NULL, "out untouched on failure");
    EXPECT_ERR(clip_archive_info(NULL, (const clip_archive *)NULL), CLIP_EINVALID, "out");
    EXPECT_ERR(clip_archive_info(&s, NULL), CLIP_EINVALID, "archive");
    CHECK(s == NULL, "out untouched on failure");
    EXPECT_ERR(clip_mount_new(NULL, "a", "b", NULL), CLIP_EINVALID, "out");
    EXPECT_ERR(clip_mount_new(&m, NULL, "b", NULL), CLIP_EINVALID, "archive_path");
    EXPECT_ERR(clip_mount_new(&m, "a", NULL, NULL), CLIP_EINVALID, "mountpoint");
    CHECK(m == NULL, "out untouched on failure");
    EXPECT_ERR(clip_mount_wait(NULL), CLIP_EINVALID, "mount");
    EXPECT_ERR(clip_mount_unmount(NULL), CLIP_EINVALID, "mount");
    {
        clip_stats st;
        st.version = CLIP_STATS_VERSION;
        EXPECT_ERR(clip_mount_stats(&st, NULL), CLIP_EINVALID, "mount");
        EXPECT_ERR(clip_mount_stats(NULL, NULL), CLIP_EINVALID, "out");
    }
    EXPECT_ERR(clip_cancel_new(NULL), CLIP_EINVALID, "out");
    EXPECT_ERR(clip_cancel_cancel(NULL), CLIP_EINVALID, "cancel");
    EXPECT_ERR(clip_cancel_is_cancelled(NULL), CLIP_EINVALID, "cancel");
    EXPECT_ERR(clip_credential_set_anonymous(NULL), CLIP_EINVALID, "cred");
    EXPECT_ERR(clip_credential_set_basic(NULL, "u", "p"), CLIP_EINVALID, "cred");
    EXPECT_ERR(clip_credential_set_token(NULL, "t"), CLIP_EINVALID, "cred");
    /* Frees accept NULL. */
    clip_string_free(NULL);
    clip_archive_close(NULL);
    clip_mount_free(NULL);
    clip_cancel_free(NULL);
    CHECK(!exists(out), "no output after failures");
    free(out);
}

/* Progress recording: per layer, the sequence of stages must be STARTING,
 * PROGRESS*, COMPLETED, with non-decreasing byte counts. */
#define MAX_LAYERS 16
struct progress_log {
    pthread_mutex_t lock;
    int in_callback;   /* detects concurrent calls */
    int concurrent;
    int events;
    int stop_after;    /* return non-zero at this event (0: never) */
    size_t layer_count;
    int state[MAX_LAYERS + 1]; /* 0 none, 1 started, 2 completed */
    uint64_t last_done[MAX_LAYERS + 1];
    char digest[MAX_LAYERS + 1][80];
    size_t max_completed;
    int errors;
    char source[32];
    /* For the cancel test: the first STARTING event signals this. */
    pthread_cond_t started_cv;
    int started;
};

static void progress_log_init(struct progress_log *l) {
    memset(l, 0, sizeof *l);
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->started_cv, NULL);
}

static void progress_log_destroy(struct progress_log *l) {
    pthread_mutex_destroy(&l->lock);
    pthread_cond_destroy(&l->started_cv);
}

static int on_progress(const clip_progress *p, void *payload) {
    struct progress_log *l = payload;
    int rc = 0;
    size_t i = p->layer_index;
    if (__atomic_exchange_n(&l->in_callback, 1, __ATOMIC_SEQ_CST)) l->concurrent = 1;
    pthread_mutex_lock(&l->lock);
    l->events++;
    if (i < 1 || i > MAX_LAYERS || (l->layer_count && p->layer_count != l->layer_count)) {
        l->errors++;
        fprintf(stderr, "  progress: bad layer %zu of %zu\n", i, p->layer_count);
        goto out;
    }
    l->layer_count = p->layer_count;
    snprintf(l->source, sizeof l->source, "%s", p->source);
    switch (p->stage) {
    case CLIP_STAGE_STARTING:
        if (l->state[i] != 0) {
            l->errors++;
            fprintf(stderr, "  progress: layer %zu started twice\n", i);
        }
        l->state[i] = 1;
        snprintf(l->digest[i], sizeof l->digest[i], "%s", p->layer_digest);
        l->started = 1;
        pthread_cond_broadcast(&l->started_cv);
        break;
    case CLIP_STAGE_PROGRESS:
    case CLIP_STAGE_COMPLETED:
        if (l->state[i] != 1) {
            l->errors++;
            fprintf(stderr, "  progress: layer %zu stage %u in state %d\n", i, p->stage, l->state[i]);
        }
        if (strcmp(l->digest[i], p->layer_digest) != 0) {
            l->errors++;
            fprintf(stderr, "  progress: layer %zu digest changed\n", i);
        }
        if (p->compressed_done < l->last_done[i] || p->compressed_done > p->compressed_total) {
            l->errors++;
            fprintf(stderr, "  progress: layer %zu compressed %llu after %llu of %llu\n", i,
                    (unsigned long long)p->compressed_done, (unsigned long long)l->last_done[i],
                    (unsigned long long)p->compressed_total);
        }
        l->last_done[i] = p->compressed_done;
        if (p->stage == CLIP_STAGE_COMPLETED) {
            l->state[i] = 2;
            if (p->compressed_done != p->compressed_total || p->completed_layers < 1 ||
                p->completed_layers > p->layer_count) {
                l->errors++;
                fprintf(stderr, "  progress: layer %zu completed with %llu of %llu, %zu layers done\n", i,
                        (unsigned long long)p->compressed_done, (unsigned long long)p->compressed_total,
                        p->completed_layers);
            }
            if (p->completed_layers > l->max_completed) l->max_completed = p->completed_layers;
        }
        break;
    default:
        l->errors++;
        fprintf(stderr, "  progress: unknown stage %u\n", p->stage);
    }
out:
    if (l->stop_after && l->events >= l->stop_after) rc = 42;
    pthread_mutex_unlock(&l->lock);
    __atomic_store_n(&l->in_callback, 0, __ATOMIC_SEQ_CST);
    return rc;
}

static void check_progress_complete(struct progress_log *l, size_t layers, const char *source) {
    size_t i;
    CHECK(l->errors == 0, "%d progress errors", l->errors);
    CHECK(!l->concurrent, "progress callback called concurrently");
    CHECK(l->layer_count == layers, "layer_count %zu, want %zu", l->layer_count, layers);
    for (i = 1; i <= layers && i <= MAX_LAYERS; i++)
        CHECK(l->state[i] == 2, "layer %zu ended in state %d", i, l->state[i]);
    CHECK(l->max_completed == layers, "completed_layers reached %zu of %zu", l->max_completed, layers);
    CHECK(strcmp(l->source, source) == 0, "source %s, want %s", l->source, source);
}

static void test_index_layout(void) {
    clip_create_options o;
    struct progress_log log;
    char *json;
    size_t i;
    free(v1_archive);
    v1_archive = path_in(work, "v1.clip");
    progress_log_init(&log);
    EXPECT_OK(clip_create_options_init(&o, CLIP_CREATE_OPTIONS_VERSION));
    o.progress_cb = on_progress;
    o.progress_payload = &log;
    o.span_size = 1 << 20;
    o.concurrency = 2;
    EXPECT_OK(clip_index_layout(layout, "v1", v1_archive, &o));
    CHECK(exists(v1_archive), "%s written", v1_archive);
    check_progress_complete(&log, 2, "local-layout");

    json = info_json(v1_archive);
    CHECK(json != NULL, "info: %s", last_message());
    if (json) {
        CHECK(strstr(json, "\"format_version\":1") != NULL, "format version in %s", json);
        CHECK(strstr(json, "\"index_only\":true") != NULL, "index_only in %s", json);
        CHECK(strstr(json, "\"storage_type\":\"oci\"") != NULL, "storage type in %s", json);
        CHECK(strstr(json, "\"registry\":\"\"") != NULL, "no registry recorded in %s", json);
        CHECK(strstr(json, "\"span_size\":1048576") != NULL, "span size in %s", json);
        CHECK(strstr(json, "\"FOO=bar\"") != NULL, "env in %s", json);
        CHECK(strstr(json, "\"cmd\":[\"/bin/app\",\"--serve\"]") != NULL, "cmd in %s", json);
        CHECK(strstr(json, "\"entrypoint\":[\"/bin/entry\"]") != NULL, "entrypoint in %s", json);
        CHECK(strstr(json, "\"user\":\"1000:1000\"") != NULL, "user in %s", json);
        CHECK(strstr(json, "\"working_dir\":\"/data\"") != NULL, "working_dir in %s", json);
        CHECK(strstr(json, "\"source\":\"oci:") != NULL, "source in %s", json);
        for (i = 1; i <= 2; i++)
            CHECK(strstr(json, log.digest[i]) != NULL, "layer %zu digest %s in %s", i, log.digest[i], json);
        CHECK(strstr(json, "\"diff_id\":\"sha256:") != NULL, "diff_ids in %s", json);
        clip_string_free(json);
    }

    /* With a storage reference and a platform: recorded, digest as reference. */
    {
        char *out = path_in(work, "v1-storage.clip");
        EXPECT_OK(clip_create_options_init(&o, CLIP_CREATE_OPTIONS_VERSION));
        o.storage_ref = "registry.example.com:5000/team/app:v1";
        o.platform = "linux/arm64/v8"; /* a single-platform image: not consulted */
        {
            char *ref = NULL;
            if (asprintf(&ref, "oci:%s:v1", layout) < 0) abort();
            EXPECT_OK(clip_create_from_image(ref, out, &o));
            free(ref);
        }
        json = info_json(out);
        CHECK(json && strstr(json, "\"registry\":\"registry.example.com:5000\"") &&
                  strstr(json, "\"repository\":\"team/app\"") && strstr(json, "\"reference\":\"sha256:"),
              "storage recorded: %s", json ? json : last_message());
        clip_string_free(json);
        free(out);
    }
    progress_log_destroy(&log);
}

static void test_index_errors(void) {
    clip_create_options o;
    clip_registry_options r;
    char *out = path_in(work, "bad.clip");
    char *missing = path_in(work, "no-such-layout");
    EXPECT_ERR(clip_index_layout(missing, "v1", out, NULL), CLIP_ENOTFOUND, "no-such-layout");
    EXPECT_ERR(clip_index_layout(layout, "no-such-tag", out, NULL), CLIP_ENOTFOUND, "no-such-tag");
    EXPECT_ERR(clip_index_layout(layout, "\xc3\x28", out, NULL), CLIP_EINVALID, "tag");
    /* Two images in the layout: a tag is needed. */
    EXPECT_ERR(clip_index_layout(layout, NULL, out, NULL), CLIP_EINVALID, NULL);

    EXPECT_OK(clip_create_options_init(&o, CLIP_CREATE_OPTIONS_VERSION));
    o.version = 0;
    EXPECT_ERR(clip_index_layout(layout, "v1", out, &o), CLIP_EVERSION, "clip_create_options version 0");
    o.version = 99;
    EXPECT_ERR(clip_index_layout(layout, "v1", out, &o), CLIP_EVERSION, "version 99");
    o.version = CLIP_CREATE_OPTIONS_VERSION;
    o.span_size = 1000;
    EXPECT_ERR(clip_index_layout(layout, "v1", out, &o), CLIP_EINVALID, "span size 1000");
    o.span_size = 0;
    o.platform = "not-a-platform";
    EXPECT_ERR(clip_index_layout(layout, "v1", out, &o), CLIP_EINVALID, "not-a-platform");
    o.platform = NULL;
    o.storage_ref = "oci:/somewhere";
    EXPECT_ERR(clip_index_layout(layout, "v1", out, &o), CLIP_EINVALID, "oci:/somewhere");
    o.storage_ref = NULL;

    EXPECT_OK(clip_registry_options_init(&r, CLIP_REGISTRY_OPTIONS_VERSION));
    o.registry = &r;
    r.credential_kind = 9;
    EXPECT_ERR(clip_index_layout(layout, "v1", out, &o), CLIP_EINVALID, "credential_kind 9");
    r.credential_kind = CLIP_CREDENTIAL_BASIC;
    EXPECT_ERR(clip_index_layout(layout, "v1", out, &o), CLIP_EINVALID, "registry->username");
    r.credential_kind = CLIP_CREDENTIAL_DEFAULT;
    r.plain_http_count = 2;
    EXPECT_ERR(clip_index_layout(layout, "v1", out, &o), CLIP_EINVALID, "plain_http");
    r.plain_http_count = 0;
    r.version = 5;
    EXPECT_ERR(clip_index_layout(layout, "v1", out, &o), CLIP_EVERSION, "clip_registry_options version 5");

    EXPECT_ERR(clip_create_from_image("UPPER/Case::bad", out, NULL), CLIP_EINVALID, "UPPER/Case::bad");
    CHECK(!exists(out), "no output after failures");
    CHECK(!dir_has_prefix(work, ".bad.clip"), "no temp file left");
    free(out);
    free(missing);
}

static void test_progress_abort(void) {
    clip_create_options o;
    struct progress_log log;
    char *out = path_in(work, "aborted.clip");
    progress_log_init(&log);
    log.stop_after = 1;
    EXPECT_OK(clip_create_options_init(&o, CLIP_CREATE_OPTIONS_VERSION));
    o.progress_cb = on_progress;
    o.progress_payload = &log;
    EXPECT_ERR(clip_index_layout(layout, "v1", out, &o), CLIP_EUSER, "callback");
    CHECK(!exists(out), "no output after a callback stopped the call");
    CHECK(log.events == 1, "no progress event after the stop (%d events)", log.events);
    progress_log_destroy(&log);
    free(out);
}

static void test_cancel_before(void) {
    clip_cancel *c = NULL;
    clip_create_options o;
    char *out = path_in(work, "cancelled.clip");
    EXPECT_OK(clip_cancel_new(&c));
    CHECK(clip_cancel_is_cancelled(c) == 0, "new token not cancelled");
    EXPECT_OK(clip_cancel_cancel(c));
    CHECK(clip_cancel_is_cancelled(c) == 1, "cancelled token");
    EXPECT_OK(clip_create_options_init(&o, CLIP_CREATE_OPTIONS_VERSION));
    o.cancel = c;
    EXPECT_ERR(clip_index_layout(layout, "v1", out, &o), CLIP_ECANCELED, "cancel");
    CHECK(!exists(out), "no output after cancel");
    clip_cancel_free(c);
    free(out);
}

struct create_job {
    const char *tag;
    const char *out;
    clip_create_options *opts;
    int rc;
    int code;
    char message[512];
    double finished;
};

static void *create_thread(void *arg) {
    struct create_job *j = arg;
    j->rc = clip_index_layout(layout, j->tag, j->out, j->opts);
    j->finished = now_s();
    /* The last error is per thread: read it here. */
    j->code = clip_error_last()->code;
    snprintf(j->message, sizeof j->message, "%s", last_message());
    return NULL;
}

static void test_cancel_thread(void) {
    clip_cancel *c = NULL;
    clip_create_options o;
    struct progress_log log;
    struct create_job job;
    pthread_t t;
    double t0, cancelled;
    char *out = path_in(work, "big.clip");
    progress_log_init(&log);
    EXPECT_OK(clip_cancel_new(&c));
    EXPECT_OK(clip_create_options_init(&o, CLIP_CREATE_OPTIONS_VERSION));
    o.cancel = c;
    o.progress_cb = on_progress;
    o.progress_payload = &log;
    memset(&job, 0, sizeof job);
    job.tag = "big";
    job.out = out;
    job.opts = &o;
    t0 = now_s();
    pthread_create(&t, NULL, create_thread, &job);
    pthread_mutex_lock(&log.lock);
    while (!log.started) pthread_cond_wait(&log.started_cv, &log.lock);
    pthread_mutex_unlock(&log.lock);
    usleep(100 * 1000); /* well into the layer */
    cancelled = now_s();
    EXPECT_OK(clip_cancel_cancel(c));
    pthread_join(t, NULL);
    CHECK(job.rc == CLIP_ECANCELED && job.code == CLIP_ECANCELED, "rc %d, last error {%d, %s}", job.rc, job.code,
          job.message);
    {
        /* Valgrind runs everything ~50 times slower: run.sh gives it more time. */
        const char *limit_s = getenv("CLIP_TEST_CANCEL_LIMIT");
        double limit = limit_s ? atof(limit_s) : 1.0;
        CHECK(job.finished - cancelled < limit, "returned %.3f s after the cancel (limit %.1f s)",
              job.finished - cancelled, limit);
    }
    CHECK(!exists(out), "no output after cancel");
    CHECK(!dir_has_prefix(work, ".big.clip"), "no temp file after cancel");
    printf("  cancel: started after %.3f s, returned %.3f s after the cancel\n", cancelled - t0,
           job.finished - cancelled);
    clip_cancel_free(c);
    progress_log_destroy(&log);
    free(out);
}

static void test_archive_errors(void) {
    clip_archive *a = NULL;
    char *missing = path_in(work, "missing.clip");
    char *garbage = path_in(work, "garbage.clip");
    char *truncated = path_in(work, "truncated.clip");
    char *newer = path_in(work, "newer.clip");
    size_t len = 0;
    char *bytes;
    ensure_v1_archive();
    EXPECT_ERR(clip_archive_open(&a, missing), CLIP_ENOTFOUND, "missing.clip");
    write_file(garbage, "this is not an archive at all, not even close, definitely not 64+ bytes long", 77);
    EXPECT_ERR(clip_archive_open(&a, garbage), CLIP_EFORMAT, "garbage.clip");
    bytes = read_file(v1_archive, &len);
    CHECK(bytes && len > 200, "read %s", v1_archive);
    if (bytes) {
        write_file(truncated, bytes, len - 100);
        EXPECT_ERR(clip_archive_open(&a, truncated), CLIP_EFORMAT, "truncated.clip");
        bytes[len / 2] ^= 0x55; /* corrupt a section */
        write_file(truncated, bytes, len);
        EXPECT_ERR(clip_archive_open(&a, truncated), CLIP_EFORMAT, "checksum");
        bytes[len / 2] ^= 0x55;
        bytes[8] = 9; /* format version 9 */
        write_file(newer, bytes, len);
        EXPECT_ERR(clip_archive_open(&a, newer), CLIP_EVERSION, "version 9");
        free(bytes);
    }
    CHECK(a == NULL, "out untouched on failure");
    EXPECT_ERR(clip_archive_open(&a, work), CLIP_ERROR, NULL); /* a directory */
    free(missing);
    free(garbage);
    free(truncated);
    free(newer);
}

struct info_job {
    clip_archive *a;
    int fails;
    int own_error_ok;
};

static void *info_thread(void *arg) {
    struct info_job *j = arg;
    int i;
    for (i = 0; i < 500; i++) {
        char *s = NULL;
        if (clip_archive_info(&s, j->a) != CLIP_OK || !s || s[0] != '{') j->fails++;
        clip_string_free(s);
    }
    /* An error on this thread is not seen by the others. */
    clip_set_log_level("per-thread");
    j->own_error_ok = clip_error_last()->code == CLIP_EINVALID && strstr(last_message(), "per-thread") != NULL;
    return NULL;
}

static void test_threads(void) {
    clip_archive *a = NULL;
    struct info_job jobs[4];
    pthread_t t[4];
    int i;
    ensure_v1_archive();
    EXPECT_OK(clip_archive_open(&a, v1_archive));
    clip_error_clear();
    for (i = 0; i < 4; i++) {
        jobs[i].a = a;
        jobs[i].fails = 0;
        jobs[i].own_error_ok = 0;
        pthread_create(&t[i], NULL, info_thread, &jobs[i]);
    }
    for (i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        CHECK(jobs[i].fails == 0, "thread %d: %d failed info calls", i, jobs[i].fails);
        CHECK(jobs[i].own_error_ok, "thread %d saw its own error", i);
    }
    CHECK(clip_error_last()->code == CLIP_OK, "main thread's error untouched: %s", last_message());
    clip_archive_close(a);
}

/* Read observer: records the paths it sees. */
struct observed {
    pthread_mutex_t lock;
    int calls;
    int saw_hello;
    int saw_random;
    int bad_events;
    int span_events;
    uint64_t random_bytes;
};

static void on_read(const clip_read_event *e, void *payload) {
    struct observed *o = payload;
    size_t i;
    pthread_mutex_lock(&o->lock);
    if (strcmp(e->operation, "clip.read") != 0) {
        /* Span work below the reads (version 3): no path, no pid needed. */
        o->span_events++;
        if (e->path[0] != '\0' || strncmp(e->decompressed_hash, "sha256:", 7) != 0) o->bad_events++;
        pthread_mutex_unlock(&o->lock);
        return;
    }
    for (i = 0; i < e->attrs_len; i++)
        if (e->attrs[i].key == NULL || e->attrs[i].value == NULL) o->bad_events++;
    o->calls++;
    if (strcmp(e->path, "/etc/hello.txt") == 0) o->saw_hello = 1;
    if (strcmp(e->path, "/data/random.bin") == 0) {
        o->saw_random = 1;
        o->random_bytes += e->bytes_read;
    }
    if (e->error_code != CLIP_OK || e->error != NULL || e->bytes_read != e->length || e->length == 0 ||
        strncmp(e->layer_digest, "sha256:", 7) != 0 || e->pid == 0 || e->duration_ns == 0) {
        o->bad_events++;
        fprintf(stderr, "  observer: %s at %llu: %llu of %llu bytes, pid %u, layer %s, error {%d, %s}\n", e->path,
                (unsigned long long)e->offset, (unsigned long long)e->bytes_read, (unsigned long long)e->length,
                e->pid, e->layer_digest, e->error_code, e->error ? e->error : "NULL");
    }
    pthread_mutex_unlock(&o->lock);
}

/* The observer runs after the reply: give it a moment. */
static void wait_observed(struct observed *o, uint64_t random_bytes) {
    int i;
    for (i = 0; i < 200; i++) {
        int done;
        pthread_mutex_lock(&o->lock);
        done = o->saw_hello && o->saw_random && o->random_bytes >= random_bytes;
        pthread_mutex_unlock(&o->lock);
        if (done) return;
        usleep(10 * 1000);
    }
}

struct wait_job {
    clip_mount *m;
    int rc;
    double returned;
};

static void *wait_thread(void *arg) {
    struct wait_job *j = arg;
    j->rc = clip_mount_wait(j->m);
    j->returned = now_s();
    return NULL;
}

/* Whether `dir` (an absolute path without symlinks: run.sh makes the work
 * directory with mktemp under /tmp) is a mount point. Never stats `dir` itself:
 * see compare_file. */
static int is_mounted(const char *dir) {
    char *info = read_file("/proc/self/mountinfo", NULL);
    char needle[4200];
    int found;
    if (!info) return 0;
    snprintf(needle, sizeof needle, " %s ", dir);
    found = strstr(info, needle) != NULL;
    free(info);
    return found;
}

/* Compares `rel` under the mount `mnt` with the same file of the rootfs the
 * fixture was built from. The mounted file is read by a child process (cmp), never
 * by this one: under valgrind, a thread of the process serving the mount that
 * blocks in a FUSE request valgrind does not expect to block (stat, open) holds
 * valgrind's lock and the serving threads can never answer. */
static void compare_file(const char *mnt, const char *rel) {
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "cmp '%s/%s' '%s/%s'", mnt, rel, env("CLIP_TEST_ROOTFS"), rel);
    CHECK(system(cmd) == 0, "%s", cmd);
}

/* Whether reading `rel` under `mnt` (in a child process) succeeds. */
static int can_read(const char *mnt, const char *rel) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "cat '%s/%s' >/dev/null 2>&1", mnt, rel);
    return system(cmd) == 0;
}

static void test_mount(void) {
    clip_mount_options mo;
    clip_mount *m = NULL;
    clip_stats st;
    struct observed obs;
    struct wait_job wj;
    pthread_t t;
    char *mnt = path_in(work, "mnt");
    char *cache = path_in(work, "cache");
    double unmounted;
    if (access("/dev/fuse", R_OK | W_OK) != 0) {
        CHECK(0, "/dev/fuse is missing or not accessible (%s): the mount tests need it", strerror(errno));
        return;
    }
    ensure_v1_archive();
    memset(&obs, 0, sizeof obs);
    pthread_mutex_init(&obs.lock, NULL);
    EXPECT_OK(clip_mount_options_init(&mo, CLIP_MOUNT_OPTIONS_VERSION));
    mo.cache_dir = cache;
    mo.read_observer = on_read;
    mo.read_observer_payload = &obs;
    /* No layout given: the archive's source layout is still there. */
    EXPECT_OK(clip_mount_new(&m, v1_archive, mnt, &mo));
    if (!m) return;
    CHECK(is_mounted(mnt), "%s is mounted once clip_mount_new returns", mnt);
    compare_file(mnt, "etc/hello.txt");
    compare_file(mnt, "data/random.bin");
    wait_observed(&obs, 3000000);
    CHECK(obs.saw_hello && obs.saw_random, "observer saw hello %d random %d (%d calls)", obs.saw_hello,
          obs.saw_random, obs.calls);
    CHECK(obs.bad_events == 0, "%d unexpected read events", obs.bad_events);
    CHECK(obs.random_bytes >= 3000000, "observer saw %llu bytes of random.bin",
          (unsigned long long)obs.random_bytes);
    st.version = CLIP_STATS_VERSION;
    EXPECT_OK(clip_mount_stats(&st, m));
    CHECK(st.reads > 0 && st.bytes_read >= 3000000 && st.fetches > 0, "stats: %llu reads, %llu bytes, %llu fetches",
          (unsigned long long)st.reads, (unsigned long long)st.bytes_read, (unsigned long long)st.fetches);
    st.version = 0;
    EXPECT_ERR(clip_mount_stats(&st, m), CLIP_EVERSION, "clip_stats version 0");

    /* wait() blocks until unmount() from another thread. */
    memset(&wj, 0, sizeof wj);
    wj.m = m;
    wj.rc = 12345;
    pthread_create(&t, NULL, wait_thread, &wj);
    usleep(200 * 1000);
    CHECK(wj.rc == 12345, "clip_mount_wait returned before the unmount");
    unmounted = now_s();
    EXPECT_OK(clip_mount_unmount(m));
    pthread_join(t, NULL);
    CHECK(wj.rc == CLIP_OK, "clip_mount_wait: %d", wj.rc);
    CHECK(wj.returned - unmounted < 5.0, "wait returned %.3f s after unmount", wj.returned - unmounted);
    CHECK(!is_mounted(mnt), "%s unmounted", mnt);
    EXPECT_OK(clip_mount_unmount(m)); /* idempotent */
    EXPECT_OK(clip_mount_wait(m));    /* returns at once */
    clip_mount_free(m);

    /* An unmount from outside (umount(8)) ends wait() too; layout given. */
    m = NULL;
    EXPECT_OK(clip_mount_options_init(&mo, CLIP_MOUNT_OPTIONS_VERSION));
    mo.cache_dir = cache;
    mo.layout = layout;
    EXPECT_OK(clip_mount_new(&m, v1_archive, mnt, &mo));
    if (m) {
        char cmd[4200];
        compare_file(mnt, "etc/hello.txt");
        memset(&wj, 0, sizeof wj);
        wj.m = m;
        pthread_create(&t, NULL, wait_thread, &wj);
        snprintf(cmd, sizeof cmd, "umount '%s'", mnt);
        CHECK(system(cmd) == 0, "%s", cmd);
        pthread_join(t, NULL);
        CHECK(wj.rc == CLIP_OK, "clip_mount_wait after umount: %d", wj.rc);
        CHECK(!is_mounted(mnt), "%s unmounted from outside", mnt);
        clip_mount_free(m);
    }

    /* Freeing a live mount unmounts it. */
    m = NULL;
    EXPECT_OK(clip_mount_new(&m, v1_archive, mnt, &mo));
    CHECK(is_mounted(mnt), "mounted again");
    clip_mount_free(m);
    CHECK(!is_mounted(mnt), "clip_mount_free unmounted %s", mnt);

    /* Errors. */
    {
        char *missing = path_in(work, "missing.clip");
        char *nolayout = path_in(work, "no-layout");
        m = NULL;
        EXPECT_ERR(clip_mount_new(&m, missing, mnt, NULL), CLIP_ENOTFOUND, "missing.clip");
        mo.layout = nolayout;
        EXPECT_ERR(clip_mount_new(&m, v1_archive, mnt, &mo), CLIP_ENOTFOUND, "no-layout");
        mo.layout = layout;
        mo.version = CLIP_MOUNT_OPTIONS_VERSION + 1;
        EXPECT_ERR(clip_mount_new(&m, v1_archive, mnt, &mo), CLIP_EVERSION, "clip_mount_options version");
        CHECK(m == NULL, "out untouched on failure");
        CHECK(!is_mounted(mnt), "nothing mounted after failures");
        free(missing);
        free(nolayout);
    }
    pthread_mutex_destroy(&obs.lock);
    free(mnt);
    free(cache);
}

/* ------------------------------------------------------------------------ */
/* Registry                                                                 */
/* ------------------------------------------------------------------------ */

struct cred_state {
    int mode; /* 0 basic, 1 token-less passthrough, 2 fail, 3 anonymous */
    int calls;
    char registry[256];
    char scope[256];
};

static int on_credential(clip_credential *out, const char *registry, const char *scope, void *payload) {
    struct cred_state *s = payload;
    s->calls++;
    snprintf(s->registry, sizeof s->registry, "%s", registry);
    snprintf(s->scope, sizeof s->scope, "%s", scope);
    switch (s->mode) {
    case 0:
        return clip_credential_set_basic(out, env("CLIP_TEST_USER"), env("CLIP_TEST_PASS"));
    case 1:
        return CLIP_EPASSTHROUGH;
    case 2:
        return 7;
    default:
        return clip_credential_set_anonymous(out);
    }
}

static char *registry_ref(void) {
    char *ref = NULL;
    if (asprintf(&ref, "%s/%s:v1", env("CLIP_TEST_REGISTRY"), env("CLIP_TEST_REPO")) < 0) abort();
    return ref;
}

static void test_registry_create(void) {
    clip_create_options o;
    clip_registry_options r;
    struct cred_state cs;
    struct progress_log log;
    char *ref = registry_ref();
    char *out = path_in(work, "registry.clip");
    char *json;
    const char *host = env("CLIP_TEST_REGISTRY");

    EXPECT_OK(clip_create_options_init(&o, CLIP_CREATE_OPTIONS_VERSION));
    EXPECT_OK(clip_registry_options_init(&r, CLIP_REGISTRY_OPTIONS_VERSION));
    o.registry = &r;
    o.storage_ref = ref;

    /* No credentials anywhere: refused. (An empty auth file keeps the host's
     * docker config out of it.) */
    r.auth_file = env("CLIP_TEST_EMPTY_AUTH_FILE");
    EXPECT_ERR(clip_create_from_image(ref, out, &o), CLIP_EAUTH, host);
    CHECK(!exists(out), "no output after an auth failure");
    /* Anonymous, explicitly: refused, and the callback is not asked. */
    memset(&cs, 0, sizeof cs);
    r.credential_kind = CLIP_CREDENTIAL_ANONYMOUS;
    r.credential_cb = on_credential;
    r.credential_payload = &cs;
    EXPECT_ERR(clip_create_from_image(ref, out, &o), CLIP_EAUTH, NULL);
    CHECK(cs.calls == 0, "callback asked %d times despite static credentials", cs.calls);
    /* Wrong static password: refused. */
    r.credential_kind = CLIP_CREDENTIAL_BASIC;
    r.username = env("CLIP_TEST_USER");
    r.password = "wrong-password";
    EXPECT_ERR(clip_create_from_image(ref, out, &o), CLIP_EAUTH, NULL);
    /* Right static password: works, with progress from the registry. */
    r.password = env("CLIP_TEST_PASS");
    progress_log_init(&log);
    o.progress_cb = on_progress;
    o.progress_payload = &log;
    EXPECT_OK(clip_create_from_image(ref, out, &o));
    check_progress_complete(&log, 2, "registry");
    progress_log_destroy(&log);
    o.progress_cb = NULL;
    json = info_json(out);
    CHECK(json && strstr(json, host) && strstr(json, env("CLIP_TEST_REPO")) && strstr(json, "\"FOO=bar\""),
          "registry archive info: %s", json ? json : last_message());
    clip_string_free(json);
    unlink(out);

    /* The callback answers. */
    r.credential_kind = CLIP_CREDENTIAL_DEFAULT;
    r.username = r.password = NULL;
    memset(&cs, 0, sizeof cs);
    EXPECT_OK(clip_create_from_image(ref, out, &o));
    CHECK(cs.calls >= 1, "callback asked (%d)", cs.calls);
    CHECK(strcmp(cs.registry, host) == 0, "callback registry %s, want %s", cs.registry, host);
    CHECK(strstr(cs.scope, env("CLIP_TEST_REPO")) != NULL, "callback scope %s names the repository", cs.scope);
    unlink(out);

    /* The callback has no opinion: the auth file answers. */
    memset(&cs, 0, sizeof cs);
    cs.mode = 1;
    r.auth_file = env("CLIP_TEST_AUTH_FILE");
    EXPECT_OK(clip_create_from_image(ref, out, &o));
    CHECK(cs.calls >= 1, "callback asked (%d)", cs.calls);
    unlink(out);

    /* The callback stops the call. */
    memset(&cs, 0, sizeof cs);
    cs.mode = 2;
    EXPECT_ERR(clip_create_from_image(ref, out, &o), CLIP_EUSER, NULL);
    CHECK(!exists(out), "no output after the callback stopped the call");
    /* The callback says anonymous: refused. */
    memset(&cs, 0, sizeof cs);
    cs.mode = 3;
    EXPECT_ERR(clip_create_from_image(ref, out, &o), CLIP_EAUTH, NULL);

    /* Unknown repository and tag: not found, named. */
    {
        char *bad = NULL;
        memset(&cs, 0, sizeof cs);
        if (asprintf(&bad, "%s/%s:no-such-tag", host, env("CLIP_TEST_REPO")) < 0) abort();
        EXPECT_ERR(clip_create_from_image(bad, out, &o), CLIP_ENOTFOUND, "no-such-tag");
        free(bad);
    }
    free(ref);
    free(out);
}

static void test_registry_mount(void) {
    clip_create_options o;
    clip_registry_options r;
    clip_mount_options mo;
    clip_mount *m = NULL;
    struct cred_state cs;
    struct observed obs;
    char *ref = registry_ref();
    char *out = path_in(work, "registry-mount.clip");
    char *mnt = path_in(work, "mnt-registry");
    char *cache = path_in(work, "cache-registry");

    EXPECT_OK(clip_create_options_init(&o, CLIP_CREATE_OPTIONS_VERSION));
    EXPECT_OK(clip_registry_options_init(&r, CLIP_REGISTRY_OPTIONS_VERSION));
    r.credential_kind = CLIP_CREDENTIAL_BASIC;
    r.username = env("CLIP_TEST_USER");
    r.password = env("CLIP_TEST_PASS");
    o.registry = &r;
    o.storage_ref = ref;
    EXPECT_OK(clip_create_from_image(ref, out, &o));

    /* Mount with the callback answering; layers come from the registry. */
    memset(&cs, 0, sizeof cs);
    memset(&obs, 0, sizeof obs);
    pthread_mutex_init(&obs.lock, NULL);
    EXPECT_OK(clip_registry_options_init(&r, CLIP_REGISTRY_OPTIONS_VERSION));
    r.credential_cb = on_credential;
    r.credential_payload = &cs;
    r.auth_file = env("CLIP_TEST_EMPTY_AUTH_FILE");
    EXPECT_OK(clip_mount_options_init(&mo, CLIP_MOUNT_OPTIONS_VERSION));
    mo.cache_dir = cache;
    mo.registry = &r;
    mo.read_observer = on_read;
    mo.read_observer_payload = &obs;
    EXPECT_OK(clip_mount_new(&m, out, mnt, &mo));
    if (m) {
        clip_stats st;
        compare_file(mnt, "etc/hello.txt");
        compare_file(mnt, "data/random.bin");
        wait_observed(&obs, 3000000);
        CHECK(obs.saw_hello && obs.saw_random, "observer saw the files");
        CHECK(obs.bad_events == 0, "%d unexpected read events", obs.bad_events);
        CHECK(cs.calls >= 1, "credential callback asked during the mount (%d)", cs.calls);
        st.version = CLIP_STATS_VERSION;
        EXPECT_OK(clip_mount_stats(&st, m));
        CHECK(st.compressed_bytes_read > 0, "bytes fetched from the registry");
        EXPECT_OK(clip_mount_unmount(m));
        clip_mount_free(m);
    }
    /* Without credentials (and a cold cache), the mount or its reads are refused. */
    m = NULL;
    r.credential_cb = NULL;
    mo.read_observer = NULL;
    {
        char *cold = path_in(work, "cache-cold");
        int rc;
        mo.cache_dir = cold;
        rc = clip_mount_new(&m, out, mnt, &mo);
        if (rc == CLIP_OK) {
            CHECK(!can_read(mnt, "etc/hello.txt"), "reading without credentials fails");
            clip_mount_free(m);
        } else {
            EXPECT_ERR(rc, CLIP_EAUTH, NULL);
        }
        free(cold);
    }
    pthread_mutex_destroy(&obs.lock);
    free(ref);
    free(out);
    free(mnt);
    free(cache);
}

/* ------------------------------------------------------------------------ */

/* v1 archives: pack a directory, describe it, mount it (also through an options
 * struct of version 1, allocated at its own size so that ASan and valgrind see
 * any access past it), write a .rclip for it and mount that with the data
 * archive on disk; argument and option errors. No S3 request is made here (the
 * endpoint is a closed port); the Rust and Go tests upload to a real server. */
static void test_pack(void) {
    clip_pack_options po;
    clip_s3_options s3;
    clip_upload_options uo;
    clip_mount_options mo, *old;
    clip_mount *m = NULL;
    char *full = path_in(work, "packed.clip");
    char *rclip = path_in(work, "packed.rclip");
    char *upload_rclip = path_in(work, "upload.rclip");
    char *mnt = path_in(work, "mnt-v1");
    char *cache = path_in(work, "cache-v1");
    char *json;
    const char *rootfs = env("CLIP_TEST_ROOTFS");

    memset(&po, 0xab, sizeof po);
    EXPECT_OK(clip_pack_options_init(&po, CLIP_PACK_OPTIONS_VERSION));
    CHECK(po.version == CLIP_PACK_OPTIONS_VERSION && po.chunk_size == 0 && po.level == 0 && po.threads == 0 &&
              po.cancel == NULL,
          "pack defaults");
    memset(&s3, 0xab, sizeof s3);
    EXPECT_OK(clip_s3_options_init(&s3, CLIP_S3_OPTIONS_VERSION));
    CHECK(s3.version == CLIP_S3_OPTIONS_VERSION && s3.bucket == NULL && s3.key == NULL && s3.access_key == NULL &&
              s3.path_style == 0 && s3.retries == 0 && s3.timeout_ms == 0,
          "s3 defaults");
    memset(&uo, 0xab, sizeof uo);
    EXPECT_OK(clip_upload_options_init(&uo, CLIP_UPLOAD_OPTIONS_VERSION));
    CHECK(uo.version == CLIP_UPLOAD_OPTIONS_VERSION && uo.progress_cb == NULL && uo.cancel == NULL,
          "upload defaults");
    EXPECT_ERR(clip_pack_options_init(&po, 0), CLIP_EVERSION, "clip_pack_options version 0");
    EXPECT_ERR(clip_s3_options_init(&s3, 9), CLIP_EVERSION, "clip_s3_options version 9");
    EXPECT_ERR(clip_upload_options_init(NULL, CLIP_UPLOAD_OPTIONS_VERSION), CLIP_EINVALID, "opts");

    EXPECT_ERR(clip_pack_dir(NULL, full, NULL), CLIP_EINVALID, "dir");
    EXPECT_ERR(clip_pack_dir(rootfs, NULL, NULL), CLIP_EINVALID, "out_path");
    EXPECT_ERR(clip_pack_dir("/nonexistent/clip-src", full, NULL), CLIP_ENOTFOUND, "/nonexistent/clip-src");
    CHECK(!exists(full), "nothing at %s after a failed pack", full);
    po.chunk_size = 1; /* below the minimum */
    EXPECT_ERR(clip_pack_dir(rootfs, full, &po), CLIP_EINVALID, "chunk");
    EXPECT_OK(clip_pack_options_init(&po, CLIP_PACK_OPTIONS_VERSION));
    po.chunk_size = 256 * 1024;
    EXPECT_OK(clip_pack_dir(rootfs, full, &po));
    json = info_json(full);
    CHECK(json && strstr(json, "\"storage_type\":\"local\"") && strstr(json, "\"index_only\":false"),
          "info of a packed archive: %s", json ? json : last_message());
    clip_string_free(json);

    /* .rclip: needs a bucket and a key; records the location; no request made. */
    s3.endpoint = "http://127.0.0.1:1";
    s3.path_style = 1;
    EXPECT_ERR(clip_write_remote(full, rclip, NULL), CLIP_EINVALID, "s3");
    EXPECT_ERR(clip_write_remote(full, rclip, &s3), CLIP_EINVALID, "bucket");
    s3.bucket = "images";
    EXPECT_ERR(clip_write_remote(full, rclip, &s3), CLIP_EINVALID, "key");
    s3.key = "team/packed.clip";
    s3.access_key = "only-half";
    EXPECT_ERR(clip_write_remote(full, rclip, &s3), CLIP_EINVALID, "secret_key");
    s3.access_key = NULL;
    ensure_v1_archive(); /* an index-only archive has no remote form */
    EXPECT_ERR(clip_write_remote(v1_archive, rclip, &s3), CLIP_EINVALID, "index-only");
    EXPECT_OK(clip_write_remote(full, rclip, &s3));
    json = info_json(rclip);
    CHECK(json && strstr(json, "\"storage_type\":\"s3\"") && strstr(json, "\"bucket\":\"images\"") &&
              strstr(json, "\"key\":\"team/packed.clip\""),
          "info of a .rclip: %s", json ? json : last_message());
    clip_string_free(json);

    /* An upload to a closed port fails (after its retries) and leaves no .rclip. */
    s3.retries = 1;
    s3.timeout_ms = 500;
    CHECK(clip_upload(full, upload_rclip, &s3, NULL) != CLIP_OK, "upload to a closed port succeeded");
    CHECK(!exists(upload_rclip), "a failed upload left %s", upload_rclip);
    EXPECT_ERR(clip_upload(NULL, upload_rclip, &s3, NULL), CLIP_EINVALID, "archive_path");
    EXPECT_ERR(clip_upload(full, upload_rclip, NULL, NULL), CLIP_EINVALID, "s3");

    if (access("/dev/fuse", R_OK | W_OK) != 0) {
        CHECK(0, "/dev/fuse is missing or not accessible (%s): the mount tests need it", strerror(errno));
        goto out;
    }
    /* The packed archive, mounted with a version-1 options struct of its own size. */
    old = malloc(offsetof(clip_mount_options, s3));
    EXPECT_OK(clip_mount_options_init(old, 1));
    old->cache_dir = cache;
    EXPECT_OK(clip_mount_new(&m, full, mnt, old));
    free(old);
    if (m) {
        compare_file(mnt, "etc/hello.txt");
        compare_file(mnt, "data/random.bin");
        EXPECT_OK(clip_mount_unmount(m));
        clip_mount_free(m);
        m = NULL;
    }
    /* The .rclip with the full archive on disk (the Go StorageModeOverride local). */
    EXPECT_OK(clip_mount_options_init(&mo, CLIP_MOUNT_OPTIONS_VERSION));
    CHECK(mo.s3 == NULL && mo.data_archive == NULL, "mount v2 defaults");
    mo.cache_dir = cache;
    mo.data_archive = full;
    EXPECT_OK(clip_mount_new(&m, rclip, mnt, &mo));
    if (m) {
        compare_file(mnt, "etc/hello.txt");
        compare_file(mnt, "data/random.bin");
        EXPECT_OK(clip_mount_unmount(m));
        clip_mount_free(m);
        m = NULL;
    }
    mo.version = CLIP_MOUNT_OPTIONS_VERSION + 1;
    EXPECT_ERR(clip_mount_new(&m, rclip, mnt, &mo), CLIP_EVERSION, "clip_mount_options version");
out:
    free(full);
    free(rclip);
    free(upload_rclip);
    free(mnt);
    free(cache);
}

struct test {
    const char *name;
    void (*fn)(void);
};


/* A caller's layer-index cache: a small table, thread-safe (callbacks may come
 * from several indexing threads at once). */
#define MEM_CACHE_MAX 8
struct mem_cache {
    pthread_mutex_t lock;
    char *key[MEM_CACHE_MAX];
    uint8_t *data[MEM_CACHE_MAX];
    size_t len[MEM_CACHE_MAX];
    int n, gets, hits, puts;
};

static int mem_get(clip_buffer *out, const char *key, void *payload) {
    struct mem_cache *c = payload;
    int i, rc = CLIP_ENOTFOUND;
    pthread_mutex_lock(&c->lock);
    c->gets++;
    for (i = 0; i < c->n; i++)
        if (strcmp(c->key[i], key) == 0) {
            c->hits++;
            rc = clip_buffer_set(out, c->data[i], c->len[i]);
        }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static int mem_put(const char *key, const uint8_t *data, size_t len, void *payload) {
    struct mem_cache *c = payload;
    int rc = -1;
    pthread_mutex_lock(&c->lock);
    c->puts++;
    if (c->n < MEM_CACHE_MAX && strncmp(key, "clip-layer-index/rs1/span1048576/sha256_", 40) == 0) {
        c->key[c->n] = strdup(key);
        c->data[c->n] = malloc(len);
        memcpy(c->data[c->n], data, len);
        c->len[c->n] = len;
        c->n++;
        rc = 0;
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static int failing_put(const char *key, const uint8_t *data, size_t len, void *payload) {
    (void)key, (void)data, (void)len, (void)payload;
    return -1;
}

static int same_file(const char *a, const char *b) {
    size_t la, lb;
    char *x = read_file(a, &la), *y = read_file(b, &lb);
    int same = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

static void test_layer_index_cache(void) {
    clip_create_options o;
    clip_layer_index_cache_callbacks cbs;
    struct progress_log log;
    struct mem_cache mc;
    char *plain = path_in(work, "lic-plain.clip"), *a = path_in(work, "lic-a.clip");
    char *b = path_in(work, "lic-b.clip"), *dir = path_in(work, "lic-cache");
    int i;

    memset(&mc, 0, sizeof mc);
    pthread_mutex_init(&mc.lock, NULL);
    EXPECT_OK(clip_create_options_init(&o, CLIP_CREATE_OPTIONS_VERSION));
    o.span_size = 1 << 20;
    EXPECT_OK(clip_index_layout(layout, "v1", plain, &o));

    /* Callbacks: the first run stores one artifact per layer, the second reads
     * them all and no layer. */
    EXPECT_OK(clip_layer_index_cache_callbacks_init(&cbs, CLIP_LAYER_INDEX_CACHE_CALLBACKS_VERSION));
    CHECK(cbs.get == NULL && cbs.put == NULL && cbs.payload == NULL, "init leaves no callbacks");
    cbs.get = mem_get;
    cbs.put = mem_put;
    cbs.payload = &mc;
    o.layer_index_cache = &cbs;
    o.concurrency = 2;
    progress_log_init(&log);
    o.progress_cb = on_progress;
    o.progress_payload = &log;
    EXPECT_OK(clip_index_layout(layout, "v1", a, &o));
    check_progress_complete(&log, 2, "local-layout");
    progress_log_destroy(&log);
    CHECK(mc.gets == 2 && mc.puts == 2 && mc.hits == 0 && mc.n == 2, "first run: %d gets, %d puts, %d hits",
          mc.gets, mc.puts, mc.hits);
    progress_log_init(&log);
    o.progress_payload = &log;
    EXPECT_OK(clip_index_layout(layout, "v1", b, &o));
    check_progress_complete(&log, 2, "index-cache");
    progress_log_destroy(&log);
    CHECK(mc.gets == 4 && mc.puts == 2 && mc.hits == 2, "second run: %d gets, %d puts, %d hits", mc.gets, mc.puts,
          mc.hits);
    CHECK(same_file(plain, a) && same_file(plain, b), "archives with the cache equal the one without");

    /* A corrupt artifact is a miss; a put that fails is no error. */
    o.progress_cb = NULL;
    mc.data[0][mc.len[0] / 2] ^= 0x40;
    cbs.put = failing_put;
    EXPECT_OK(clip_index_layout(layout, "v1", b, &o));
    CHECK(same_file(plain, b), "archive after a corrupt artifact");

    /* Both a directory and callbacks: refused. */
    o.layer_index_cache_dir = dir;
    EXPECT_ERR(clip_index_layout(layout, "v1", b, &o), CLIP_EINVALID, "both set");
    o.layer_index_cache = NULL;

    /* The disk cache: the second run is all hits, same archive. */
    EXPECT_OK(clip_index_layout(layout, "v1", a, &o));
    progress_log_init(&log);
    o.progress_cb = on_progress;
    o.progress_payload = &log;
    EXPECT_OK(clip_index_layout(layout, "v1", b, &o));
    check_progress_complete(&log, 2, "index-cache");
    progress_log_destroy(&log);
    CHECK(same_file(plain, a) && same_file(plain, b), "archives with the disk cache");

    /* The disk cache as a handle: any key, NOT_FOUND on a miss, data freed by us. */
    {
        clip_layer_index_cache *c = NULL;
        uint8_t *data = NULL;
        size_t len = 0;
        static const char key[] = "../../etc/passwd\0with a NUL";
        EXPECT_OK(clip_layer_index_cache_open(&c, dir, 0));
        EXPECT_ERR(clip_layer_index_cache_get(&data, &len, c, (const uint8_t *)key, sizeof key),
                   CLIP_ENOTFOUND, "no entry");
        CHECK(data == NULL, "out-parameter untouched on a miss");
        EXPECT_OK(clip_layer_index_cache_put(c, (const uint8_t *)key, sizeof key, (const uint8_t *)"hello", 5));
        EXPECT_OK(clip_layer_index_cache_get(&data, &len, c, (const uint8_t *)key, sizeof key));
        CHECK(len == 5 && data && memcmp(data, "hello", 5) == 0, "round trip: %zu bytes", len);
        clip_data_free(data, len);
        EXPECT_ERR(clip_layer_index_cache_get(&data, &len, c, (const uint8_t *)key, 0), CLIP_EINVALID, "key");
        EXPECT_ERR(clip_layer_index_cache_put(NULL, (const uint8_t *)key, 1, NULL, 0), CLIP_EINVALID, "cache");
        EXPECT_ERR(clip_layer_index_cache_open(NULL, dir, 0), CLIP_EINVALID, "out");
        clip_layer_index_cache_free(c);
        clip_layer_index_cache_free(NULL);
        clip_data_free(NULL, 0);
    }

    /* A version-1 options struct (no cache fields) is still read. */
    {
        size_t v1 = offsetof(clip_create_options, layer_index_cache_dir);
        unsigned char *buf = malloc(sizeof o + 64);
        memset(buf, 0xAA, sizeof o + 64);
        EXPECT_OK(clip_create_options_init((clip_create_options *)buf, 1));
        for (i = (int)v1; i < (int)(sizeof o + 64); i++)
            if (buf[i] != 0xAA) break;
        CHECK(i == (int)(sizeof o + 64), "init of version 1 wrote past its fields (byte %d)", i);
        memset(buf + v1, 0, sizeof o + 64 - v1);
        EXPECT_OK(clip_index_layout(layout, "v1", a, (clip_create_options *)buf));
        free(buf);
    }

    for (i = 0; i < mc.n; i++) {
        free(mc.key[i]);
        free(mc.data[i]);
    }
    pthread_mutex_destroy(&mc.lock);
    free(plain);
    free(a);
    free(b);
    free(dir);
}

static const struct test tests[] = {
    {"version", test_version},
    {"log_level", test_log_level},
    {"options_init", test_options_init},
    {"null_args", test_null_args},
    {"index_layout", test_index_layout},
    {"index_errors", test_index_errors},
    {"progress_abort", test_progress_abort},
    {"cancel_before", test_cancel_before},
    {"cancel_thread", test_cancel_thread},
    {"archive_errors", test_archive_errors},
    {"threads", test_threads},
    {"mount", test_mount},
    {"registry_create", test_registry_create},
    {"registry_mount", test_registry_mount},
    {"pack", test_pack},
    {"layer_index_cache", test_layer_index_cache},
};

int main(int argc, char **argv) {
    size_t i;
    int ran = 0, j;
    work = env("CLIP_TEST_WORK");
    layout = env("CLIP_TEST_LAYOUT");
    for (i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        int selected = argc < 2;
        for (j = 1; j < argc; j++)
            if (strcmp(argv[j], tests[i].name) == 0) selected = 1;
        if (!selected) continue;
        {
            int before = failures;
            double t0 = now_s();
            current = tests[i].name;
            tests[i].fn();
            printf("%s %s (%.2f s)\n", failures == before ? "ok  " : "FAIL", tests[i].name, now_s() - t0);
            fflush(stdout);
            ran++;
        }
    }
    for (j = 1; j < argc; j++) {
        int known = 0;
        for (i = 0; i < sizeof tests / sizeof tests[0]; i++)
            if (strcmp(argv[j], tests[i].name) == 0) known = 1;
        if (!known) {
            fprintf(stderr, "harness: unknown test %s\n", argv[j]);
            return 2;
        }
    }
    free(v1_archive);
    printf("harness: %d tests, %d checks, %d failed\n", ran, checks, failures);
    return failures ? 1 : 0;
}
