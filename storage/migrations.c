/* storage/migrations.c — the versioned schema (SPEC §8), one ordered list for every backend.
 *
 * Rules: a step is never edited once released; a change is a new step at the end.  Each step runs
 * in its own transaction together with the update of meta.schema_version (see the backends).
 * The table and column names are a contract: the black-box tests read them directly. */
#include "storage/backend.h"

static const struct store_migration migrations[] = {
    {
        .version = 1,
        .description = "meta and messages",
        .sqlite_sql =
            "CREATE TABLE meta ("
            "  key TEXT PRIMARY KEY,"
            "  value TEXT NOT NULL"
            ");"
            "CREATE TABLE messages ("
            "  id TEXT PRIMARY KEY,"
            "  received_at INTEGER NOT NULL," /* Unix milliseconds */
            "  sender TEXT NOT NULL,"         /* '' for the null sender */
            "  recipients TEXT NOT NULL,"     /* JSON array of strings */
            "  remote_ip TEXT NOT NULL,"
            "  helo TEXT NOT NULL,"
            "  tls TEXT NOT NULL,"
            "  size INTEGER NOT NULL,"
            "  raw BLOB NOT NULL,"
            "  state TEXT NOT NULL DEFAULT 'accepted'" /* accepted -> routed -> done */
            ");"
            /* Start-up finds the unprocessed messages in arrival order; once routed they leave
             * the index, which stays as small as the backlog. */
            "CREATE INDEX messages_accepted ON messages (received_at) WHERE state = 'accepted';",
        .postgres_sql = NULL,
    },
};

const struct store_migration *store_migrations(size_t *count)
{
    *count = sizeof migrations / sizeof migrations[0];
    return migrations;
}

int store_schema_version(void)
{
    return migrations[sizeof migrations / sizeof migrations[0] - 1].version;
}
