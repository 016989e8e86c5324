/* bench/parse_bench.c — parse throughput over a set of messages, on one thread (issue 3, "Done when").
 *
 *   parse-bench [-n N] [-w] [-j] FILE|DIR...
 *
 * Every file (every regular file of a DIR) is read into memory once.  Then, N times over all of them
 * (after one untimed warm-up pass):
 *   gmime-bare   g_mime_parser_construct_message over a GMimeStreamMem that wraps the bytes without
 *                copying them, then unref: GMime's own structural parse, nothing decoded;
 *   inlet-parse  message_parse + message_free: the message model of SPEC §3 (bodies decoded and
 *                converted to UTF-8, stripping, attachments found), without JSON;
 *   inlet-json   message_parse + message_to_json + json_dumps + free: what a json webhook delivery
 *                costs (attachments inlined up to the default --inline-attachments-max, 10 MiB).
 * Prints MB/s (10^6 bytes of input per second of CPU time of this thread) for each, and the ratio of
 * inlet-json to gmime-bare.  -w also prints the per-file time of inlet-json, slowest first (top 10).
 *
 * -j: JSON serialization only.  Every message is parsed once (untimed), then N times over all of them:
 *   json-tree    message_to_json + json_dumps(JSON_COMPACT | JSON_PRESERVE_ORDER) + free: the jansson
 *                tree that the API and `inlet parse` use;
 *   json-post    message_post_new(MESSAGE_POST_JSON) + message_post_free: the fixed part of a json
 *                webhook POST (message/jsonw.c, no tree).
 * Both with the bench options above (10 MiB inline budget), then again as json-tree-0 / json-post-0
 * with an inline budget of 0 ("content": null): no attachment is decoded, so those two time the JSON
 * serialization alone.  Prints MB/s of JSON output and of message input per second of CPU time, and
 * checks that each pair produces the same number of bytes. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <gmime/gmime.h>
#include <jansson.h>

#include "message/message.h"

struct input {
    char *path;
    uint8_t *data;
    size_t len;
    double json_secs; /* -w: time of inlet-json for this file, summed over the runs */
};

static struct input *inputs;
static size_t ninputs, cap_inputs, total_bytes;

static double thread_cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int read_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        fprintf(stderr, "parse-bench: %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16, len = 0, n;
    uint8_t *buf = malloc(cap);
    while (buf && (n = fread(buf + len, 1, cap - len, fp)) > 0) {
        len += n;
        if (len == cap) {
            uint8_t *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    fclose(fp);
    if (!buf) return -1;
    if (ninputs == cap_inputs) {
        cap_inputs = cap_inputs ? cap_inputs * 2 : 512;
        struct input *ni = realloc(inputs, cap_inputs * sizeof *inputs);
        if (!ni) return -1;
        inputs = ni;
    }
    inputs[ninputs++] = (struct input){.path = strdup(path), .data = buf, .len = len};
    total_bytes += len;
    return 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int read_arg(const char *arg)
{
    struct stat st;
    if (stat(arg, &st) != 0) {
        fprintf(stderr, "parse-bench: %s: %s\n", arg, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) return read_file(arg);
    DIR *d = opendir(arg);
    if (!d) return -1;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 512;
            char **nn = realloc(names, cap * sizeof *names);
            if (!nn) return -1;
            names = nn;
        }
        size_t sz = strlen(arg) + strlen(e->d_name) + 2;
        names[n] = malloc(sz);
        if (!names[n]) return -1;
        snprintf(names[n], sz, "%s/%s", arg, e->d_name);
        n++;
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_names);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        if (rc == 0 && stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) rc = read_file(names[i]);
        free(names[i]);
    }
    free(names);
    return rc;
}

static size_t sink; /* keeps the work observable */

static const struct message_json_options bench_opts = {
    .recipient = "bob@example.com",
    .sender = "alice@example.org",
    .id = "bench",
    .inline_attachments_max = 10485760,
};

static void gmime_bare(const struct input *in)
{
    /* The GByteArray borrows the bytes; with owner = FALSE the stream leaves the array alone, and
     * g_byte_array_free(arr, FALSE) then frees only the wrapper. */
    GByteArray *arr = g_byte_array_new_take(in->data, in->len);
    GMimeStream *stream = g_mime_stream_mem_new_with_byte_array(arr);
    g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(stream), FALSE);
    GMimeParser *parser = g_mime_parser_new_with_stream(stream);
    GMimeParserOptions *opts = g_mime_parser_options_new();
    GMimeMessage *msg = g_mime_parser_construct_message(parser, opts);
    sink += msg != NULL;
    if (msg) g_object_unref(msg);
    g_mime_parser_options_free(opts);
    g_object_unref(parser);
    g_object_unref(stream);
    (void)g_byte_array_free(arr, FALSE);
}

static void inlet_parse(const struct input *in)
{
    struct message *m = message_parse(in->data, in->len);
    if (!m) abort();
    sink += message_attachment_count(m);
    message_free(m);
}

static void inlet_json(const struct input *in)
{
    struct message *m = message_parse(in->data, in->len);
    if (!m) abort();
    json_t *j = message_to_json(m, &bench_opts);
    if (!j) abort();
    char *s = json_dumps(j, 0);
    if (!s) abort();
    sink += strlen(s);
    free(s);
    json_decref(j);
    message_free(m);
}

/* -j: messages parsed once; the phases serialize them. */
static struct message **parsed;
static size_t json_out_bytes;

static struct message_json_options json_opts; /* bench_opts, or with an inline budget of 0 */

static void json_tree(size_t i)
{
    json_t *j = message_to_json(parsed[i], &json_opts);
    if (!j) abort();
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!s) abort();
    size_t n = strlen(s);
    sink += n;
    json_out_bytes += n;
    free(s);
    json_decref(j);
}

static void json_post(size_t i)
{
    const struct message_post_options po = {.json = json_opts};
    struct message_post *p = message_post_new(parsed[i], inputs[i].data, inputs[i].len,
                                              MESSAGE_POST_JSON, &po);
    if (!p) abort();
    size_t n = message_post_fixed_len(p) + 1; /* + the "}" of the tail */
    sink += n;
    json_out_bytes += n;
    message_post_free(p);
}

static int json_only(int runs)
{
    parsed = malloc(ninputs * sizeof *parsed);
    if (!parsed) return 1;
    for (size_t i = 0; i < ninputs; i++)
        if (!(parsed[i] = message_parse(inputs[i].data, inputs[i].len))) abort();
    struct {
        const char *name;
        void (*fn)(size_t);
        size_t budget;
        double cpu;
        size_t out;
    } ph[] = {{"json-tree", json_tree, bench_opts.inline_attachments_max, 0, 0},
              {"json-post", json_post, bench_opts.inline_attachments_max, 0, 0},
              {"json-tree-0", json_tree, 0, 0, 0},
              {"json-post-0", json_post, 0, 0, 0}};
    for (size_t p = 0; p < sizeof ph / sizeof ph[0]; p++) {
        json_opts = bench_opts;
        json_opts.inline_attachments_max = ph[p].budget;
        for (size_t i = 0; i < ninputs; i++) ph[p].fn(i); /* warm-up */
        json_out_bytes = 0;
        double c0 = thread_cpu_now();
        for (int r = 0; r < runs; r++)
            for (size_t i = 0; i < ninputs; i++) ph[p].fn(i);
        ph[p].cpu = thread_cpu_now() - c0;
        ph[p].out = json_out_bytes / (size_t)runs;
        printf("  %-11s %8.1f MB/s of JSON, %8.1f MB/s of input  (%.3f s CPU, %.3f ms per message, "
               "%zu JSON bytes per run)\n",
               ph[p].name, (double)ph[p].out * runs / 1e6 / ph[p].cpu,
               (double)total_bytes * runs / 1e6 / ph[p].cpu, ph[p].cpu,
               1e3 * ph[p].cpu / ((double)ninputs * runs), ph[p].out);
        fflush(stdout);
    }
    bool same = true;
    for (size_t p = 0; p + 1 < sizeof ph / sizeof ph[0]; p += 2) {
        printf("  %s / %s: %.2fx the time (%.1fx the throughput)%s\n", ph[p + 1].name, ph[p].name,
               ph[p + 1].cpu / ph[p].cpu, ph[p].cpu / ph[p + 1].cpu,
               ph[p].out == ph[p + 1].out ? "" : "  -- OUTPUT SIZES DIFFER");
        same = same && ph[p].out == ph[p + 1].out;
    }
    for (size_t i = 0; i < ninputs; i++) message_free(parsed[i]);
    free(parsed);
    return same ? 0 : 1;
}

struct phase {
    const char *name;
    void (*fn)(const struct input *);
    double cpu, wall;
};

static void run_phase(struct phase *p, int runs, int per_file)
{
    for (size_t i = 0; i < ninputs; i++) p->fn(&inputs[i]); /* warm-up */
    double c0 = thread_cpu_now(), w0 = wall_now();
    for (int r = 0; r < runs; r++) {
        for (size_t i = 0; i < ninputs; i++) {
            double t = per_file ? thread_cpu_now() : 0;
            p->fn(&inputs[i]);
            if (per_file) inputs[i].json_secs += thread_cpu_now() - t;
        }
    }
    p->cpu = thread_cpu_now() - c0;
    p->wall = wall_now() - w0;
}

static int cmp_slowest(const void *a, const void *b)
{
    const struct input *x = a, *y = b;
    return (x->json_secs < y->json_secs) - (x->json_secs > y->json_secs);
}

int main(int argc, char **argv)
{
    int runs = 5, worst = 0, json = 0, i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > 100000) {
                fprintf(stderr, "parse-bench: -n wants a count\n");
                return 2;
            }
            runs = (int)v;
        } else if (strcmp(argv[i], "-w") == 0) {
            worst = 1;
        } else if (strcmp(argv[i], "-j") == 0) {
            json = 1;
        } else {
            break;
        }
    }
    if (i >= argc) {
        fprintf(stderr, "usage: parse-bench [-n N] [-w] [-j] FILE|DIR...\n");
        return 2;
    }
    for (; i < argc; i++)
        if (read_arg(argv[i]) != 0) return 1;
    if (ninputs == 0 || total_bytes == 0) {
        fprintf(stderr, "parse-bench: no input\n");
        return 1;
    }
    message_lib_init();
    char ver[64];
    message_lib_version(ver, sizeof ver);

    if (json) {
        printf("parse-bench -j: %zu files, %.2f MB, %d runs each (after one warm-up run), one thread, "
               "%s\n", ninputs, (double)total_bytes / 1e6, runs, ver);
        int rc = json_only(runs);
        for (size_t k = 0; k < ninputs; k++) {
            free(inputs[k].data);
            free(inputs[k].path);
        }
        free(inputs);
        message_lib_shutdown();
        return rc;
    }

    struct phase phases[] = {
        {"gmime-bare", gmime_bare, 0, 0},
        {"inlet-parse", inlet_parse, 0, 0},
        {"inlet-json", inlet_json, 0, 0},
    };
    const double mb = (double)total_bytes * runs / 1e6;
    printf("parse-bench: %zu files, %.2f MB, %d runs each (after one warm-up run), one thread, %s\n",
           ninputs, (double)total_bytes / 1e6, runs, ver);
    for (size_t p = 0; p < sizeof phases / sizeof phases[0]; p++) {
        run_phase(&phases[p], runs, worst && p == 2);
        printf("  %-12s %8.1f MB/s  (%.3f s CPU, %.3f s wall, %.3f ms per message)\n", phases[p].name,
               mb / phases[p].cpu, phases[p].cpu, phases[p].wall,
               1e3 * phases[p].cpu / ((double)ninputs * runs));
        fflush(stdout);
    }
    printf("  inlet-json / gmime-bare: %.2fx the time (%.0f%% of GMime's throughput); "
           "inlet-parse / gmime-bare: %.2fx\n",
           phases[2].cpu / phases[0].cpu, 100.0 * phases[0].cpu / phases[2].cpu,
           phases[1].cpu / phases[0].cpu);
    if (worst) {
        qsort(inputs, ninputs, sizeof *inputs, cmp_slowest);
        printf("  slowest in inlet-json (CPU per run):\n");
        for (size_t k = 0; k < ninputs && k < 10; k++)
            printf("    %8.2f ms  %9zu bytes  %s\n", 1e3 * inputs[k].json_secs / runs, inputs[k].len,
                   inputs[k].path);
    }
    for (size_t k = 0; k < ninputs; k++) {
        free(inputs[k].data);
        free(inputs[k].path);
    }
    free(inputs);
    message_lib_shutdown();
    return sink == 0 ? 1 : 0;
}
