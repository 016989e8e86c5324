/* tests/fuzz/fuzz_main.h — the plain-program side of every fuzz target.
 *
 * A target defines LLVMFuzzerTestOneInput() and includes this header.  Built with libFuzzer
 * (-DINLET_LIBFUZZER, -fsanitize=fuzzer) the header adds nothing; otherwise it adds a main() that
 * runs the target once over every file named on the command line, and over every file of every
 * directory named there (in name order, not recursive: a seed directory, as libFuzzer reads it),
 * so every build runs the targets over their seeds and the corpus ("-q": one summary line
 * instead of one line per file). */
#ifndef INLET_TESTS_FUZZ_MAIN_H
#define INLET_TESTS_FUZZ_MAIN_H

#include <dirent.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

/* Runs the target over one file; 0, or -1 when it cannot be read. */
static int fuzz_run_file(const char *path, bool quiet)
{
    size_t len;
    uint8_t *buf = fuzz_read_file(path, &len);
    if (!buf) return -1;
    fuzz_input_name = path;
    LLVMFuzzerTestOneInput(buf, len);
    free(buf);
    if (!quiet) printf("%s: ok\n", path);
    return 0;
}

static int fuzz_skip_dots(const struct dirent *d)
{
    return d->d_name[0] != '.';
}

/* Runs the target over every file of a directory; the number run, or -1. */
static int fuzz_run_dir(const char *dir, bool quiet)
{
    struct dirent **names;
    int n = scandir(dir, &names, fuzz_skip_dots, alphasort), done = 0;
    if (n < 0) {
        perror(dir);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        char path[4096];
        struct stat st;
        int w = snprintf(path, sizeof path, "%s/%s", dir, names[i]->d_name);
        if (w < 0 || (size_t)w >= sizeof path) {
            fprintf(stderr, "%s/%s: path too long\n", dir, names[i]->d_name);
            done = -1;
        } else if (done >= 0 && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            done = fuzz_run_file(path, quiet) == 0 ? done + 1 : -1;
        }
        free(names[i]);
    }
    free(names);
    return done;
}

int main(int argc, char **argv)
{
    bool quiet = false;
    int done = 0;
    setvbuf(stdout, NULL, _IOLBF, 0); /* "FILE: ok" must be out before a crash on the next file */
    for (int i = 1; i < argc; i++) {
        struct stat st;
        int n;
        if (strcmp(argv[i], "-q") == 0) {
            quiet = true;
            continue;
        }
        if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode))
            n = fuzz_run_dir(argv[i], quiet);
        else
            n = fuzz_run_file(argv[i], quiet) == 0 ? 1 : -1;
        if (n < 0) return 1;
        done += n;
    }
    if (quiet) printf("%d inputs ok\n", done);
    return 0;
}
#endif

#endif
