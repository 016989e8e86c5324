/* storage/migrations.c — the versioned schema (SPEC §8), one ordered list for every backend.
 *
 * Rules: a step is never edited once released; a change is a new step at the end.  Each step runs
 * in its own transaction together with the update of meta.schema_version (see the backends).
 * The table and column names are a contract: the black-box tests read them directly. */
#include "storage/internal.h"

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
    {
        .version = 2,
        .description = "routes and routing outcomes",
        .sqlite_sql =
            /* seq keeps creation order (SPEC §4: ties in priority go by creation, never by id);
             * AUTOINCREMENT so that a deleted route's seq is never given to a new one. */
            "CREATE TABLE routes ("
            "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            "  id TEXT NOT NULL UNIQUE,"
            "  priority INTEGER NOT NULL,"
            "  description TEXT NOT NULL,"
            "  expression TEXT NOT NULL,"
            "  actions TEXT NOT NULL," /* JSON array of strings */
            "  created_at INTEGER NOT NULL"  /* Unix seconds */
            ");"
            "CREATE INDEX routes_order ON routes (priority, seq);"
            /* The evaluation of each envelope recipient (JSON text as the engine made it). */
            "CREATE TABLE recipients ("
            "  message_id TEXT NOT NULL,"
            "  recipient TEXT NOT NULL,"
            "  outcome TEXT NOT NULL,"  /* routed | dropped */
            "  routes TEXT NOT NULL,"   /* JSON: matched routes, captures, actions */
            "  warnings TEXT NOT NULL," /* JSON array of strings */
            "  PRIMARY KEY (message_id, recipient)"
            ");"
            /* The durable retry queue (SPEC §5): one row per planned delivery. */
            "CREATE TABLE deliveries ("
            "  id TEXT PRIMARY KEY,"         /* X-Inlet-Delivery */
            "  message_id TEXT NOT NULL,"
            "  recipient TEXT NOT NULL,"
            "  route_ids TEXT NOT NULL,"     /* JSON array of route ids */
            "  kind TEXT NOT NULL,"          /* url | address */
            "  target TEXT NOT NULL,"
            "  format TEXT NOT NULL,"        /* json | mailgun | mime | '' (default) */
            "  state TEXT NOT NULL DEFAULT 'pending',"
            "  attempts INTEGER NOT NULL DEFAULT 0,"
            "  next_attempt_at INTEGER NOT NULL," /* Unix seconds */
            "  lease_until INTEGER,"
            "  last_status INTEGER,"
            "  last_error TEXT,"
            "  created_at INTEGER NOT NULL"
            ");"
            "CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';"
            "CREATE INDEX deliveries_message ON deliveries (message_id);"
            /* Stored copies (SPEC §6). */
            "CREATE TABLE stored ("
            "  key TEXT PRIMARY KEY,"
            "  message_id TEXT NOT NULL,"
            "  recipient TEXT NOT NULL,"
            "  domain TEXT NOT NULL,"
            "  route_id TEXT NOT NULL,"      /* '' for a postmaster copy no route asked for */
            "  notify TEXT,"                 /* notify URL or NULL */
            "  format TEXT NOT NULL,"
            "  expires_at INTEGER NOT NULL," /* Unix seconds */
            "  created_at INTEGER NOT NULL"
            ");"
            "CREATE INDEX stored_expires ON stored (expires_at);"
            "CREATE INDEX stored_message ON stored (message_id);"
            "ALTER TABLE messages ADD COLUMN parse_warnings TEXT NOT NULL DEFAULT '[]';",
        .postgres_sql = NULL,
    },
    {
        .version = 3,
        .description = "attempts, events, purge candidates",
        .sqlite_sql =
            /* Every finished attempt of a delivery (SPEC §5); goes with its delivery. */
            "CREATE TABLE attempts ("
            "  delivery_id TEXT NOT NULL,"
            "  n INTEGER NOT NULL,"             /* 1, 2, ... */
            "  started_at INTEGER NOT NULL,"    /* Unix milliseconds */
            "  duration_ms INTEGER NOT NULL,"
            "  status INTEGER,"                 /* HTTP status / SMTP reply code; NULL: none */
            "  error TEXT NOT NULL,"            /* '' when delivered */
            "  outcome TEXT NOT NULL,"          /* delivered | retry | failed */
            "  PRIMARY KEY (delivery_id, n)"
            ");"
            /* What happened to a (message, recipient) (SPEC §7).  AUTOINCREMENT: ids follow the
             * order of writing, never reused after the sweeper deleted the newest rows. */
            "CREATE TABLE events ("
            "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
            "  ts INTEGER NOT NULL,"            /* Unix milliseconds */
            "  event TEXT NOT NULL,"            /* accepted | stored | delivered | failed */
            "  severity TEXT NOT NULL DEFAULT ''," /* temporary | permanent for failed */
            "  message_id TEXT NOT NULL,"
            "  recipient TEXT NOT NULL,"
            "  domain TEXT NOT NULL,"           /* recipient's domain, lower case */
            "  delivery_id TEXT NOT NULL DEFAULT '',"
            "  detail TEXT NOT NULL DEFAULT '{}'" /* JSON object */
            ");"
            /* The events API reads one domain by time (the rowid id completes the order); the
             * sweeper deletes by time; look-ups by message. */
            "CREATE INDEX events_domain_ts ON events (domain, ts);"
            "CREATE INDEX events_ts ON events (ts);"
            "CREATE INDEX events_message ON events (message_id);"
            /* The dead-letter list (state, newest update first) and the sweeper's history
             * look-ups.  Rows written before this step: updated_at = created_at. */
            "ALTER TABLE deliveries ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;"
            "UPDATE deliveries SET updated_at = created_at;"
            "CREATE INDEX deliveries_state_updated ON deliveries (state, updated_at, id);"
            /* The stored copy a delivery refers to (store_delivery_plan.copy_key), '' for none. */
            "ALTER TABLE deliveries ADD COLUMN copy_key TEXT NOT NULL DEFAULT '';"
            /* Messages that may have become unneeded (SPEC §6 retention): the triggers below
             * note a message whenever something that kept its bytes goes away, and the sweeper
             * checks and purges only these, never scanning every message.  A message still
             * needed is dropped from the list; whatever keeps it notes it again when it goes. */
            "CREATE TABLE purge_candidates ("
            "  message_id TEXT PRIMARY KEY"
            ") WITHOUT ROWID;"
            "CREATE TRIGGER purge_on_routed AFTER UPDATE OF state ON messages"
            "  WHEN new.state <> 'accepted' BEGIN"
            "  INSERT OR IGNORE INTO purge_candidates (message_id) VALUES (new.id);"
            " END;"
            "CREATE TRIGGER purge_on_delivery_end AFTER UPDATE OF state ON deliveries"
            "  WHEN new.state = 'delivered' BEGIN"
            "  INSERT OR IGNORE INTO purge_candidates (message_id) VALUES (new.message_id);"
            " END;"
            "CREATE TRIGGER purge_on_delivery_gone AFTER DELETE ON deliveries BEGIN"
            "  INSERT OR IGNORE INTO purge_candidates (message_id) VALUES (old.message_id);"
            " END;"
            "CREATE TRIGGER purge_on_copy_gone AFTER DELETE ON stored BEGIN"
            "  INSERT OR IGNORE INTO purge_candidates (message_id) VALUES (old.message_id);"
            " END;"
            "INSERT INTO purge_candidates (message_id)"
            "  SELECT id FROM messages WHERE state <> 'accepted';",
        .postgres_sql = NULL,
    },
    {
        .version = 4,
        .description = "deliveries by stored copy",
        /* A stored copy lives on past its expiry while a pending or failed delivery refers to
         * it (its URLs are in that delivery's payload): the copy look-up and the sweeper ask. */
        .sqlite_sql = "CREATE INDEX deliveries_copy_key ON deliveries (copy_key, state)"
                      " WHERE copy_key <> '';",
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
