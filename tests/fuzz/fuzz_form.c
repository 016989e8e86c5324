/* tests/fuzz/fuzz_form.c — api/form.c (urlencoded and multipart bodies) and the Basic
 * credentials parser of api/auth.c under arbitrary bytes.
 *
 * Input: a Content-Type line, a LF, then the body.  Without a LF the whole input is an
 * urlencoded body.  The body is parsed by api_form_parse() with that type, as urlencoded, and as
 * multipart with the boundary "XyZ" (so the fuzzer need not guess one); the type line also goes
 * to api_auth_check() as an Authorization header.  Every parse must leave a consistent form:
 * at most FORM_FIELDS_MAX fields, names non-empty, without NUL, at most FORM_NAME_MAX bytes,
 * values NUL-terminated and no longer than the body, an error message exactly when it fails.
 * Built with libFuzzer when -DINLET_LIBFUZZER, otherwise as a program that runs every file named
 * on its command line. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/internal_form.h"
#include "api/internal.h"
#include "util/limits.h"

#include "fuzz/fuzz_main.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_form(const struct form *f, enum form_status st, const char *err, size_t len)
{
    if (f->n > FORM_FIELDS_MAX) abort();
    if ((st == FORM_OK) != (err == NULL)) abort();
    for (size_t i = 0; i < f->n; i++) {
        const struct form_field *fld = &f->fields[i];
        size_t nlen = strlen(fld->name);
        if (nlen == 0 || nlen > FORM_NAME_MAX) abort();
        if (fld->len > len || fld->value[fld->len] != '\0') abort();
        if (fld->filename && strlen(fld->filename) > FORM_FILENAME_MAX) abort();
        if (fld->content_type && strlen(fld->content_type) > FORM_FILENAME_MAX) abort();
    }
}

static void parse_one(int how, const char *ctype, const uint8_t *body, size_t len)
{
    struct form f = {0};
    char *err = NULL;
    enum form_status st;

    if (how == 0)
        st = api_form_parse(&f, ctype, body, len, &err);
    else if (how == 1)
        st = api_form_parse_urlencoded(&f, body, len, &err);
    else
        st = api_form_parse_multipart(&f, "XyZ", body, len, &err);
    check_form(&f, st, err, len);
    free(err);
    api_form_free(&f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct api_auth auth;
    static bool init;
    if (!init) {
        api_auth_init(&auth, "fuzz-key");
        init = true;
    }
    const uint8_t *nl = memchr(data, '\n', size);
    char ctype[512] = "application/x-www-form-urlencoded";
    const uint8_t *body = data;
    size_t len = size;
    if (nl) {
        size_t tlen = (size_t)(nl - data);
        if (tlen >= sizeof ctype) tlen = sizeof ctype - 1;
        memcpy(ctype, data, tlen);
        ctype[tlen] = '\0';
        body = nl + 1;
        len = size - (size_t)(nl + 1 - data);
        (void)api_auth_check(&auth, ctype);
    }
    /* A copy of exactly `len` bytes, so that a read past the end is caught by ASan. */
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) return 0;
    if (len) memcpy(copy, body, len);
    for (int how = 0; how < 3; how++) parse_one(how, ctype, copy, len);
    free(copy);
    return 0;
}
