/* tests/routes/regex_driver.c — runs the regex layer of routes/ (the Python-to-PCRE2 rewrite,
 * the compile options and the match limits of routes/regex.c) over regex_cases.tsv, for
 * differential.py to compare with Python's re.match.
 *
 *   regex_driver CASES.tsv
 *
 * CASES.tsv: "PATTERN<TAB>SUBJECT" per line; '#' lines and blank lines are skipped.  PATTERN is
 * verbatim (as in a Python raw string r'...'); in SUBJECT, \t \n \r are those characters,
 * \xNN is the byte NN (so invalid UTF-8 can be written) and \\ is a backslash.  Both may hold
 * UTF-8 as is.
 *
 * Output, one line per case, fields separated by TABs:
 *   LINE  ERR                              the pattern does not compile
 *   LINE  NOMATCH
 *   LINE  LIMIT                            a match/depth/heap limit or the JIT stack was hit
 *   LINE  MATCH  S,E  G1  G2 ...  names:N=I,...
 * where S,E are byte offsets of the whole match, each Gk is "S,E" or "-" (did not participate),
 * and names lists the named groups with their numbers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routes/internal.h"
#include "util/limits.h"

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static size_t decode(const char *s, char *out)
{
    size_t n = 0;
    for (const char *p = s; *p;) {
        if (p[0] == '\\' && p[1] == 't') {
            out[n++] = '\t', p += 2;
        } else if (p[0] == '\\' && p[1] == 'n') {
            out[n++] = '\n', p += 2;
        } else if (p[0] == '\\' && p[1] == 'r') {
            out[n++] = '\r', p += 2;
        } else if (p[0] == '\\' && p[1] == '\\') {
            out[n++] = '\\', p += 2;
        } else if (p[0] == '\\' && p[1] == 'x' && hexval(p[2]) >= 0 && hexval(p[3]) >= 0) {
            out[n++] = (char)(hexval(p[2]) * 16 + hexval(p[3])), p += 4;
        } else {
            out[n++] = *p++;
        }
    }
    out[n] = '\0';
    return n;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: regex_driver CASES.tsv\n");
        return 2;
    }
    FILE *fp = fopen(argv[1], "r");
    if (!fp) {
        perror(argv[1]);
        return 2;
    }
    pcre2_match_data *md = pcre2_match_data_create(ROUTE_CAPTURES_MAX + 1, NULL);
    pcre2_match_context *mc = pcre2_match_context_create(NULL);
    pcre2_set_match_limit(mc, ROUTE_MATCH_LIMIT);
    pcre2_set_depth_limit(mc, ROUTE_DEPTH_LIMIT);
    pcre2_set_heap_limit(mc, ROUTE_HEAP_LIMIT_KIB);
    pcre2_jit_stack *js = NULL;
    if (route_jit_available()) {
        js = pcre2_jit_stack_create(ROUTE_JIT_STACK_START, ROUTE_JIT_STACK_MAX, NULL);
        pcre2_jit_stack_assign(mc, NULL, js);
    }
    char line[16384], subj[16384];
    int lineno = 0;
    while (fgets(line, sizeof line, fp)) {
        lineno++;
        size_t l = strlen(line);
        if (l && line[l - 1] == '\n') line[--l] = '\0';
        if (line[0] == '#' || line[0] == '\0') continue;
        char *tab = strchr(line, '\t');
        if (!tab) {
            fprintf(stderr, "line %d: no TAB\n", lineno);
            return 2;
        }
        *tab = '\0';
        const size_t slen = decode(tab + 1, subj);
        struct route_regex re;
        char err[256];
        size_t off;
        if (route_regex_compile(line, strlen(line), &re, err, sizeof err, &off) < 0) {
            printf("%d\tERR\n", lineno);
            continue;
        }
        int rc = route_regex_match(&re, md, mc, subj, slen);
        if (rc == PCRE2_ERROR_NOMATCH) {
            printf("%d\tNOMATCH\n", lineno);
        } else if (rc < 0) {
            printf("%d\tLIMIT\n", lineno);
        } else {
            const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            printf("%d\tMATCH\t%zu,%zu", lineno, (size_t)ov[0], (size_t)ov[1]);
            for (uint32_t k = 1; k <= re.ncaptures; k++) {
                if (ov[2 * k] == PCRE2_UNSET) {
                    printf("\t-");
                } else {
                    printf("\t%zu,%zu", (size_t)ov[2 * k], (size_t)ov[2 * k + 1]);
                }
            }
            printf("\tnames:");
            for (size_t k = 0; k < re.nnames; k++) printf("%s%s=%u", k ? "," : "", re.names[k], re.name_groups[k]);
            printf("\n");
        }
        route_regex_free(&re);
    }
    fclose(fp);
    pcre2_match_data_free(md);
    pcre2_match_context_free(mc);
    pcre2_jit_stack_free(js);
    return 0;
}
