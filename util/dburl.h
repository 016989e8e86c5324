/* util/dburl.h — the --database setting: which backend a URL names, and the URL as it may be shown.
 *
 * Forms (SPEC §8): "" (SQLite in the data dir), "sqlite:PATH", or a libpq connection URI
 * "postgresql://[user[:password]@][host][:port][/dbname][?param=value&...]" ("postgres://" too).
 * A password may sit in the URI (user:password@, or ?password=); it is never shown: every log
 * line, error and `inlet check-config` prints dburl_redact()'s copy.  Operators keep it out of
 * the URI with libpq's PGPASSFILE, or out of the process list with INLET_DATABASE. */
#ifndef INLET_UTIL_DBURL_H
#define INLET_UTIL_DBURL_H

enum dburl_kind {
    DBURL_INVALID,
    DBURL_SQLITE,   /* "" or "sqlite:PATH" */
    DBURL_POSTGRES, /* postgresql:// or postgres:// */
};

/* Which backend `url` names; DBURL_INVALID for anything else, and for "sqlite:" with no path. */
enum dburl_kind dburl_kind(const char *url);

/* A copy of `url` with every password replaced by "***" (malloc'd, g_free): the user:password@
 * part and a password= parameter of any scheme://... URL (a mistyped scheme too); anything else
 * comes back as it is. */
char *dburl_redact(const char *url);

#endif
