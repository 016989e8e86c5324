/* tests/routes/golden.c — golden-file driver for the route engine (routes/routes.h).
 *
 *   golden FILE.in [FILE.out]          run FILE.in, compare with FILE.out (default: .in -> .out);
 *                                      exit 1 and show the first difference when they differ
 *   golden --update FILE.in [FILE.out] run FILE.in and (re)write FILE.out
 *   golden --print FILE.in             run FILE.in and print the output
 *
 * The .in format, one command per line (every line is echoed to the output as "> line", so the
 * .out reads on its own):
 *
 *   # text                     a comment; blank lines are kept too
 *   route PRIORITY EXPRESSION  a route (id "rN", N counting route lines from 1; seq = N).  The
 *                              expression is the rest of the line, verbatim
 *   action TEXT                one action of the last route, verbatim
 *   header NAME: VALUE         a header of the message (in order; VALUE after ": ")
 *   rcpt ADDRESS               evaluate every route that compiled for this recipient
 *   could ADDRESS              route_could_match
 *   match ADDRESS              route_match_address
 *   reset                      forget routes and headers;  "reset headers": only the headers
 *
 * In header values and addresses (only there) \xNN is the byte NN and \\ a backslash, so that
 * invalid UTF-8 can be written.  On every line, $repeat(C,N) stands for the byte C N times
 * (for limits).  After the action lines of a route, the route is compiled and the driver prints
 * "= rN ok" or "= rN error: <route_compile's message>".  For rcpt the output is
 *
 *     hit rN [stop]                    each matched route in evaluation order
 *       capture NAME = "VALUE"         "1", "2", ... then named groups
 *       action RESOLVED                the actions with captures substituted
 *     delivery url|address "TARGET" format=default|json|mailgun routes=rA,rB
 *     store rN notify="URL"|- format=...
 *     warning "TEXT"
 *     (no route matched)               when there is no hit
 *
 * Strings are printed with " and \ escaped and control bytes or invalid UTF-8 as \xNN. */
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routes/routes.h"
#include "util/log.h"

struct rdef {
    char id[16];
    int32_t priority;
    int64_t seq;
    char *expression;
    char **actions;
    size_t nactions;
    bool ok;
};

struct state {
    GString *out;
    GPtrArray *routes;       /* struct rdef * */
    struct rdef *pending;    /* last route, not compiled yet */
    GPtrArray *hnames, *hvalues;
    struct route_table *table;
    struct route_matcher *m;
    int nroutes;
};

static void put_escaped(GString *out, const char *s, size_t len)
{
    g_string_append_c(out, '"');
    const char *p = s, *end = s + len;
    while (p < end) {
        const unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            g_string_append_c(out, '\\');
            g_string_append_c(out, (char)c);
            p++;
        } else if (c < 0x20 || c == 0x7f) {
            g_string_append_printf(out, "\\x%02x", c);
            p++;
        } else if (c < 0x80) {
            g_string_append_c(out, (char)c);
            p++;
        } else {
            gunichar u = g_utf8_get_char_validated(p, end - p);
            if (u == (gunichar)-1 || u == (gunichar)-2) {
                g_string_append_printf(out, "\\x%02x", c);
                p++;
            } else {
                const char *n = p + g_utf8_skip[c];
                g_string_append_len(out, p, n - p);
                p = n;
            }
        }
    }
    g_string_append_c(out, '"');
}

static void put_str(GString *out, const char *s)
{
    put_escaped(out, s, strlen(s));
}

/* $repeat(C,N) */
static char *expand(const char *line)
{
    GString *g = g_string_new(NULL);
    for (const char *p = line; *p;) {
        if (strncmp(p, "$repeat(", 8) == 0 && p[8] && p[9] == ',') {
            char *end = NULL;
            long n = strtol(p + 10, &end, 10);
            if (end && *end == ')' && n >= 0 && n < 1000000) {
                for (long i = 0; i < n; i++) g_string_append_c(g, p[8]);
                p = end + 1;
                continue;
            }
        }
        g_string_append_c(g, *p++);
    }
    return g_string_free(g, FALSE);
}

/* \xNN and \\ */
static char *decode(const char *s)
{
    GString *g = g_string_new(NULL);
    for (const char *p = s; *p;) {
        if (p[0] == '\\' && p[1] == '\\') {
            g_string_append_c(g, '\\');
            p += 2;
        } else if (p[0] == '\\' && p[1] == 'x' && g_ascii_isxdigit(p[2]) && g_ascii_isxdigit(p[3])) {
            g_string_append_c(g, (char)(g_ascii_xdigit_value(p[2]) * 16 + g_ascii_xdigit_value(p[3])));
            p += 4;
        } else {
            g_string_append_c(g, *p++);
        }
    }
    return g_string_free(g, FALSE);
}

static struct route *compile_def(const struct rdef *d, char **err)
{
    const struct route_def def = {
        .id = d->id,
        .priority = d->priority,
        .seq = d->seq,
        .description = "",
        .expression = d->expression,
        .actions = (const char *const *)d->actions,
        .nactions = d->nactions,
        .created_at = 0,
    };
    return route_compile(&def, err);
}

static void finish_pending(struct state *st)
{
    struct rdef *d = st->pending;
    if (!d) return;
    st->pending = NULL;
    char *err = NULL;
    struct route *r = compile_def(d, &err);
    if (r) {
        d->ok = true;
        route_free(r);
        g_string_append_printf(st->out, "= %s ok\n", d->id);
    } else {
        g_string_append_printf(st->out, "= %s error: %s\n", d->id, err ? err : "(no message)");
        free(err);
    }
    route_table_unref(st->table);
    st->table = NULL;
}

static void build_table(struct state *st)
{
    if (st->table) return;
    struct route **rs = g_new0(struct route *, st->routes->len + 1);
    size_t n = 0;
    for (guint i = 0; i < st->routes->len; i++) {
        struct rdef *d = g_ptr_array_index(st->routes, i);
        if (!d->ok) continue;
        char *err = NULL;
        rs[n] = compile_def(d, &err);
        if (!rs[n]) {
            fprintf(stderr, "recompiling %s failed: %s\n", d->id, err);
            exit(2);
        }
        n++;
    }
    st->table = route_table_new(rs, n);
    g_free(rs);
}

static const char *format_name(enum route_format f)
{
    return f == ROUTE_FORMAT_JSON ? "json" : f == ROUTE_FORMAT_MAILGUN ? "mailgun" : "default";
}

static void do_rcpt(struct state *st, const char *addr)
{
    build_table(st);
    const struct route_message msg = {
        .recipient = addr,
        .nheaders = st->hnames->len,
        .header_names = (const char *const *)st->hnames->pdata,
        .header_values = (const char *const *)st->hvalues->pdata,
    };
    struct route_result res;
    if (route_evaluate(st->table, st->m, &msg, &res) < 0) g_string_append(st->out, "  OUT OF MEMORY\n");
    GString *o = st->out;
    for (size_t i = 0; i < res.nhits; i++) {
        const struct route_hit *h = &res.hits[i];
        g_string_append_printf(o, "  hit %s%s\n", h->route_id, h->stop ? " stop" : "");
        for (size_t k = 0; k < h->ncaptures; k++) {
            g_string_append_printf(o, "    capture %s = ", h->capture_names[k]);
            put_str(o, h->capture_values[k]);
            g_string_append_c(o, '\n');
        }
        for (size_t k = 0; k < h->nactions; k++) g_string_append_printf(o, "    action %s\n", h->actions[k]);
    }
    for (size_t i = 0; i < res.ndeliveries; i++) {
        const struct route_delivery *d = &res.deliveries[i];
        g_string_append_printf(o, "  delivery %s ", d->kind == ROUTE_DEST_URL ? "url" : "address");
        put_str(o, d->target);
        g_string_append_printf(o, " format=%s routes=", format_name(d->format));
        for (size_t k = 0; k < d->nroute_ids; k++) g_string_append_printf(o, "%s%s", k ? "," : "", d->route_ids[k]);
        g_string_append_c(o, '\n');
    }
    for (size_t i = 0; i < res.nstores; i++) {
        const struct route_store *s = &res.stores[i];
        g_string_append_printf(o, "  store %s notify=", s->route_id);
        if (s->notify) {
            put_str(o, s->notify);
        } else {
            g_string_append_c(o, '-');
        }
        g_string_append_printf(o, " format=%s\n", format_name(s->format));
    }
    for (size_t i = 0; i < res.nwarnings; i++) {
        g_string_append(o, "  warning ");
        put_str(o, res.warnings[i]);
        g_string_append_c(o, '\n');
    }
    if (res.nhits == 0) g_string_append(o, "  (no route matched)\n");
    route_result_clear(&res);
}

static void free_rdef(gpointer p)
{
    struct rdef *d = p;
    g_free(d->expression);
    for (size_t i = 0; i < d->nactions; i++) g_free(d->actions[i]);
    g_free(d->actions);
    g_free(d);
}

static int run_line(struct state *st, const char *raw, int lineno)
{
    char *line = expand(raw);
    const bool is_action = strncmp(line, "action ", 7) == 0 || strcmp(line, "action") == 0;
    if (!is_action) finish_pending(st);
    /* Echo the line as written (a $repeat stays short). */
    g_string_append_printf(st->out, "> %s\n", raw);
    int rc = 0;
    if (is_action) {
        if (!st->pending) {
            fprintf(stderr, "line %d: action without a route\n", lineno);
            rc = -1;
        } else {
            struct rdef *d = st->pending;
            d->actions = g_renew(char *, d->actions, d->nactions + 1);
            d->actions[d->nactions++] = g_strdup(line[6] ? line + 7 : "");
        }
        g_free(line);
        return rc;
    }
    if (line[0] == '#' || line[0] == '\0') {
        /* comment */
    } else if (strncmp(line, "route ", 6) == 0) {
        char *end = NULL;
        long prio = strtol(line + 6, &end, 10);
        if (end == line + 6 || *end != ' ') {
            fprintf(stderr, "line %d: route PRIORITY EXPRESSION\n", lineno);
            rc = -1;
        } else {
            struct rdef *d = g_new0(struct rdef, 1);
            st->nroutes++;
            snprintf(d->id, sizeof d->id, "r%d", st->nroutes);
            d->priority = (int32_t)prio;
            d->seq = st->nroutes;
            d->expression = g_strdup(end + 1);
            g_ptr_array_add(st->routes, d);
            st->pending = d;
        }
    } else if (strncmp(line, "header ", 7) == 0) {
        const char *colon = strchr(line + 7, ':');
        if (!colon) {
            fprintf(stderr, "line %d: header NAME: VALUE\n", lineno);
            rc = -1;
        } else {
            const char *v = colon + 1;
            if (*v == ' ') v++;
            g_ptr_array_insert(st->hnames, (gint)st->hnames->len - 1, g_strndup(line + 7, colon - (line + 7)));
            g_ptr_array_insert(st->hvalues, (gint)st->hvalues->len - 1, decode(v));
        }
    } else if (strncmp(line, "rcpt ", 5) == 0) {
        char *a = decode(line + 5);
        do_rcpt(st, a);
        g_free(a);
    } else if (strncmp(line, "could ", 6) == 0 || strncmp(line, "match ", 6) == 0) {
        build_table(st);
        char *a = decode(line + 6);
        if (line[0] == 'c') {
            g_string_append_printf(st->out, "  %s\n", route_could_match(st->table, st->m, a) ? "yes" : "no");
        } else {
            const struct route *r = route_match_address(st->table, st->m, a);
            g_string_append_printf(st->out, "  %s\n", r ? route_get_def(r)->id : "none");
        }
        g_free(a);
    } else if (strcmp(line, "reset") == 0 || strcmp(line, "reset headers") == 0) {
        g_ptr_array_set_size(st->hnames, 0);
        g_ptr_array_set_size(st->hvalues, 0);
        g_ptr_array_add(st->hnames, NULL);
        g_ptr_array_add(st->hvalues, NULL);
        if (strcmp(line, "reset") == 0) {
            g_ptr_array_set_size(st->routes, 0);
            st->nroutes = 0;
            route_table_unref(st->table);
            st->table = NULL;
        }
    } else {
        fprintf(stderr, "line %d: unknown command\n", lineno);
        rc = -1;
    }
    g_free(line);
    return rc;
}

static int run_file(const char *path, GString *out)
{
    char *text = NULL;
    GError *gerr = NULL;
    if (!g_file_get_contents(path, &text, NULL, &gerr)) {
        fprintf(stderr, "%s: %s\n", path, gerr->message);
        g_error_free(gerr);
        return -1;
    }
    struct state st = {
        .out = out,
        .routes = g_ptr_array_new_with_free_func(free_rdef),
        .hnames = g_ptr_array_new_with_free_func(g_free),
        .hvalues = g_ptr_array_new_with_free_func(g_free),
        .m = route_matcher_new(),
    };
    /* NULL-terminated, so pdata can be handed over as it is. */
    g_ptr_array_add(st.hnames, NULL);
    g_ptr_array_add(st.hvalues, NULL);
    char **lines = g_strsplit(text, "\n", -1);
    int rc = 0;
    const guint n = g_strv_length(lines);
    for (guint i = 0; i < n; i++) {
        if (i + 1 == n && lines[i][0] == '\0') break; /* the final newline */
        if (run_line(&st, lines[i], (int)i + 1) < 0) rc = -1;
    }
    finish_pending(&st);
    g_strfreev(lines);
    g_free(text);
    route_table_unref(st.table);
    route_matcher_free(st.m);
    g_ptr_array_free(st.routes, TRUE);
    g_ptr_array_free(st.hnames, TRUE);
    g_ptr_array_free(st.hvalues, TRUE);
    return rc;
}

int main(int argc, char **argv)
{
    log_set_level(LOG_ERROR);
    int i = 1;
    bool update = false, print = false;
    if (i < argc && strcmp(argv[i], "--update") == 0) update = true, i++;
    if (i < argc && strcmp(argv[i], "--print") == 0) print = true, i++;
    if (i >= argc) {
        fprintf(stderr, "usage: golden [--update|--print] FILE.in [FILE.out]\n");
        return 2;
    }
    const char *in = argv[i];
    char *outpath = i + 1 < argc ? g_strdup(argv[i + 1]) : NULL;
    if (!outpath) {
        size_t l = strlen(in);
        outpath = l > 3 && strcmp(in + l - 3, ".in") == 0 ? g_strdup_printf("%.*s.out", (int)(l - 3), in)
                                                          : g_strdup_printf("%s.out", in);
    }
    GString *out = g_string_new(NULL);
    if (run_file(in, out) < 0) return 2;
    int rc = 0;
    if (print) {
        fputs(out->str, stdout);
    } else if (update) {
        GError *gerr = NULL;
        if (!g_file_set_contents(outpath, out->str, (gssize)out->len, &gerr)) {
            fprintf(stderr, "%s: %s\n", outpath, gerr->message);
            rc = 2;
        } else {
            printf("wrote %s\n", outpath);
        }
    } else {
        char *want = NULL;
        gsize wlen = 0;
        if (!g_file_get_contents(outpath, &want, &wlen, NULL)) {
            fprintf(stderr, "%s: cannot read (run with --update to create it)\n", outpath);
            rc = 1;
        } else if (wlen != out->len || memcmp(want, out->str, wlen) != 0) {
            char **g = g_strsplit(out->str, "\n", -1), **w = g_strsplit(want, "\n", -1);
            guint k = 0;
            while (g[k] && w[k] && strcmp(g[k], w[k]) == 0) k++;
            printf("%s: differs from %s at line %u\n  got:  %s\n  want: %s\n", in, outpath, k + 1,
                   g[k] ? g[k] : "(end)", w[k] ? w[k] : "(end)");
            g_strfreev(g);
            g_strfreev(w);
            rc = 1;
        } else {
            printf("%s: ok\n", in);
        }
        g_free(want);
    }
    g_string_free(out, TRUE);
    g_free(outpath);
    return rc;
}
