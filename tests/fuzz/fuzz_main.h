/* tests/fuzz/fuzz_main.h — the plain-program side of every fuzz target.
 *
 * A target defines LLVMFuzzerTestOneInput() and includes this header.  Built with libFuzzer
 * (-DINLET_LIBFUZZER, -fsanitize=fuzzer) the header adds nothing; otherwise it adds a main() that
 * runs the target once over every file named on the command line ("-q": one summary line instead
 * of one line per file), so every build runs the targets over their seeds and the corpus. */
#ifndef INLET_TESTS_FUZZ_MAIN_H
#define INLET_TESTS_FUZZ_MAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The file being run, for a target's failure messages. */
static const char *fuzz_input_name __attribute__((unused)) = "(libFuzzer input)";

#ifndef INLET_LIBFUZZER
/* The whole file in a malloc'd buffer, or NULL (reported). */
static uint8_t *fuzz_read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        perror(path);
        return NULL;
    }
    size_t cap = 1 << 16, n;
    uint8_t *buf = malloc(cap);
    *len = 0;
    while (buf && (n = fread(buf + *len, 1, cap - *len, fp)) > 0) {
        *len += n;
        if (*len == cap) {
            uint8_t *bigger = realloc(buf, cap *= 2);
            if (!bigger) free(buf);
            buf = bigger;
        }
    }
    fclose(fp);
    if (!buf) fprintf(stderr, "%s: out of memory\n", path);
    return buf;
}

int main(int argc, char **argv)
{
    bool quiet = false;
    int done = 0;
    setvbuf(stdout, NULL, _IOLBF, 0); /* "FILE: ok" must be out before a crash on the next file */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-q") == 0) {
            quiet = true;
            continue;
        }
        size_t len;
        uint8_t *buf = fuzz_read_file(argv[i], &len);
        if (!buf) return 1;
        fuzz_input_name = argv[i];
        LLVMFuzzerTestOneInput(buf, len);
        free(buf);
        done++;
        if (!quiet) printf("%s: ok\n", argv[i]);
    }
    if (quiet) printf("%d inputs ok\n", done);
    return 0;
}
#endif

#endif
