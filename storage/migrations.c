/* storage/migrations.c — the versioned schema (SPEC §8), one ordered list for every backend.
 *
 * Rules: a step is never edited once released; a change is a new step at the end, with its SQL
 * for every backend (the same tables, columns and indexes; types differ where they must: BLOB /
 * BYTEA, INTEGER / BIGINT, AUTOINCREMENT / identity, triggers / trigger functions).  Each step
 * runs in its own transaction together with the update of meta.schema_version (see the
 * backends).
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
        .postgres_sql =
            "CREATE TABLE meta ("
            "  key TEXT COLLATE \"C\" PRIMARY KEY,"
            "  value TEXT NOT NULL"
            ");"
            "CREATE TABLE messages ("
            "  id TEXT COLLATE \"C\" PRIMARY KEY,"
            "  received_at BIGINT NOT NULL,"
            "  sender TEXT NOT NULL,"
            "  recipients TEXT NOT NULL,"
            "  remote_ip TEXT NOT NULL,"
            "  helo TEXT NOT NULL,"
            "  tls TEXT NOT NULL,"
            "  size BIGINT NOT NULL,"
            "  raw BYTEA NOT NULL,"
            "  state TEXT NOT NULL DEFAULT 'accepted'"
            ");"
            "CREATE INDEX messages_accepted ON messages (received_at) WHERE state = 'accepted';",
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
        .postgres_sql =
            /* An identity is never given twice, as AUTOINCREMENT. */
            "CREATE TABLE routes ("
            "  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            "  id TEXT COLLATE \"C\" NOT NULL UNIQUE,"
            "  priority INTEGER NOT NULL,"
            "  description TEXT NOT NULL,"
            "  expression TEXT NOT NULL,"
            "  actions TEXT NOT NULL,"
            "  created_at BIGINT NOT NULL"
            ");"
            "CREATE INDEX routes_order ON routes (priority, seq);"
            "CREATE TABLE recipients ("
            "  message_id TEXT COLLATE \"C\" NOT NULL,"
            "  recipient TEXT NOT NULL,"
            "  outcome TEXT NOT NULL,"
            "  routes TEXT NOT NULL,"
            "  warnings TEXT NOT NULL,"
            "  PRIMARY KEY (message_id, recipient)"
            ");"
            "CREATE TABLE deliveries ("
            "  id TEXT COLLATE \"C\" PRIMARY KEY,"
            "  message_id TEXT COLLATE \"C\" NOT NULL,"
            "  recipient TEXT NOT NULL,"
            "  route_ids TEXT NOT NULL,"
            "  kind TEXT NOT NULL,"
            "  target TEXT NOT NULL,"
            "  format TEXT NOT NULL,"
            "  state TEXT NOT NULL DEFAULT 'pending',"
            "  attempts BIGINT NOT NULL DEFAULT 0,"
            "  next_attempt_at BIGINT NOT NULL,"
            "  lease_until BIGINT,"
            "  last_status INTEGER,"
            "  last_error TEXT,"
            "  created_at BIGINT NOT NULL"
            ");"
            "CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';"
            "CREATE INDEX deliveries_message ON deliveries (message_id);"
            "CREATE TABLE stored ("
            "  key TEXT COLLATE \"C\" PRIMARY KEY,"
            "  message_id TEXT COLLATE \"C\" NOT NULL,"
            "  recipient TEXT NOT NULL,"
            "  domain TEXT NOT NULL,"
            "  route_id TEXT NOT NULL,"
            "  notify TEXT,"
            "  format TEXT NOT NULL,"
            "  expires_at BIGINT NOT NULL,"
            "  created_at BIGINT NOT NULL"
            ");"
            "CREATE INDEX stored_expires ON stored (expires_at);"
            "CREATE INDEX stored_message ON stored (message_id);"
            "ALTER TABLE messages ADD COLUMN parse_warnings TEXT NOT NULL DEFAULT '[]';",
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
        .postgres_sql =
            "CREATE TABLE attempts ("
            "  delivery_id TEXT COLLATE \"C\" NOT NULL,"
            "  n BIGINT NOT NULL,"
            "  started_at BIGINT NOT NULL,"
            "  duration_ms BIGINT NOT NULL,"
            "  status INTEGER,"
            "  error TEXT NOT NULL,"
            "  outcome TEXT NOT NULL,"
            "  PRIMARY KEY (delivery_id, n)"
            ");"
            "CREATE TABLE events ("
            "  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            "  ts BIGINT NOT NULL,"
            "  event TEXT NOT NULL,"
            "  severity TEXT NOT NULL DEFAULT '',"
            "  message_id TEXT COLLATE \"C\" NOT NULL,"
            "  recipient TEXT NOT NULL,"
            "  domain TEXT NOT NULL,"
            "  delivery_id TEXT NOT NULL DEFAULT '',"
            "  detail TEXT NOT NULL DEFAULT '{}'"
            ");"
            "CREATE INDEX events_domain_ts ON events (domain, ts);"
            "CREATE INDEX events_ts ON events (ts);"
            "CREATE INDEX events_message ON events (message_id);"
            "ALTER TABLE deliveries ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;"
            "UPDATE deliveries SET updated_at = created_at;"
            "CREATE INDEX deliveries_state_updated ON deliveries (state, updated_at, id);"
            "ALTER TABLE deliveries ADD COLUMN copy_key TEXT NOT NULL DEFAULT '';"
            "CREATE TABLE purge_candidates ("
            "  message_id TEXT COLLATE \"C\" PRIMARY KEY"
            ");"
            /* The compact JSON the SQLite backend's json() functions write, for event details:
             * the "id" strings of a routes JSON array ('[]' when it is not one), and a JSON
             * array of strings as written (its elements as they came). */
            "CREATE FUNCTION inlet_route_ids(routes text) RETURNS text LANGUAGE plpgsql"
            "  IMMUTABLE AS $$ DECLARE j json; out text; BEGIN"
            "  BEGIN j := routes::json; EXCEPTION WHEN others THEN RETURN '[]'; END;"
            "  IF j IS NULL OR json_typeof(j) <> 'array' THEN RETURN '[]'; END IF;"
            "  SELECT '[' || coalesce(string_agg(to_json(e->>'id')::text, ',' ORDER BY o), '')"
            "    || ']' INTO out FROM json_array_elements(j) WITH ORDINALITY AS t(e, o)"
            "    WHERE json_typeof(e) = 'object' AND json_typeof(e->'id') = 'string';"
            "  RETURN out; END $$;"
            "CREATE FUNCTION inlet_json_array(a text) RETURNS text LANGUAGE plpgsql"
            "  IMMUTABLE AS $$ DECLARE j json; out text; BEGIN"
            "  BEGIN j := a::json; EXCEPTION WHEN others THEN RETURN '[]'; END;"
            "  IF j IS NULL OR json_typeof(j) <> 'array' THEN RETURN '[]'; END IF;"
            "  SELECT '[' || coalesce(string_agg(e::text, ',' ORDER BY o), '') || ']' INTO out"
            "    FROM json_array_elements(j) WITH ORDINALITY AS t(e, o);"
            "  RETURN out; END $$;"
            /* The triggers of the SQLite step, as trigger functions. */
            "CREATE FUNCTION purge_note_new_id() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            "  INSERT INTO purge_candidates (message_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;"
            "  RETURN NULL; END $$;"
            "CREATE FUNCTION purge_note_new_message() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            "  INSERT INTO purge_candidates (message_id) VALUES (NEW.message_id)"
            "  ON CONFLICT DO NOTHING; RETURN NULL; END $$;"
            "CREATE FUNCTION purge_note_old_message() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            "  INSERT INTO purge_candidates (message_id) VALUES (OLD.message_id)"
            "  ON CONFLICT DO NOTHING; RETURN NULL; END $$;"
            "CREATE TRIGGER purge_on_routed AFTER UPDATE OF state ON messages FOR EACH ROW"
            "  WHEN (NEW.state <> 'accepted') EXECUTE FUNCTION purge_note_new_id();"
            "CREATE TRIGGER purge_on_delivery_end AFTER UPDATE OF state ON deliveries FOR EACH ROW"
            "  WHEN (NEW.state = 'delivered') EXECUTE FUNCTION purge_note_new_message();"
            "CREATE TRIGGER purge_on_delivery_gone AFTER DELETE ON deliveries FOR EACH ROW"
            "  EXECUTE FUNCTION purge_note_old_message();"
            "CREATE TRIGGER purge_on_copy_gone AFTER DELETE ON stored FOR EACH ROW"
            "  EXECUTE FUNCTION purge_note_old_message();"
            "INSERT INTO purge_candidates (message_id)"
            "  SELECT id FROM messages WHERE state <> 'accepted';",
    },
    {
        .version = 4,
        .description = "deliveries by stored copy",
        /* A stored copy lives on past its expiry while a pending or failed delivery refers to
         * it (its URLs are in that delivery's payload): the copy look-up and the sweeper ask. */
        .sqlite_sql = "CREATE INDEX deliveries_copy_key ON deliveries (copy_key, state)"
                      " WHERE copy_key <> '';",
        .postgres_sql = "CREATE INDEX deliveries_copy_key ON deliveries (copy_key, state)"
                        " WHERE copy_key <> '';",
    },
    {
        .version = 5,
        .description = "message bodies in the body log",
        /* SQLite keeps a message's bytes in its body log (docs/internals/storage.md, "Bodies"):
         * the row says where (segment, offset; the length is `size`) with the bytes' CRC-32, and
         * `raw` is empty.  A row whose body_segment is NULL has its bytes in `raw` (rows written
         * before this step, copied in by `inlet migrate`, or read back from a backup).  The
         * index answers the sweeper's "does any row still need this segment".  PostgreSQL keeps
         * every body in `raw` (BYTEA: every node reads it); the columns exist for the copy. */
        .sqlite_sql = "ALTER TABLE messages ADD COLUMN body_segment INTEGER;"
                      "ALTER TABLE messages ADD COLUMN body_offset INTEGER;"
                      "ALTER TABLE messages ADD COLUMN body_crc INTEGER;"
                      "CREATE INDEX messages_body_segment ON messages (body_segment)"
                      " WHERE body_segment IS NOT NULL;",
        .postgres_sql = "ALTER TABLE messages ADD COLUMN body_segment BIGINT;"
                        "ALTER TABLE messages ADD COLUMN body_offset BIGINT;"
                        "ALTER TABLE messages ADD COLUMN body_crc BIGINT;"
                        "CREATE INDEX messages_body_segment ON messages (body_segment)"
                        " WHERE body_segment IS NOT NULL;",
    },
    {
        .version = 6,
        .description = "mailboxes for POP3 pollers",
        /* A mailbox message is a stored copy with a mailbox name (SPEC §9): its key is the
         * POP3 UID, its row keeps the message's bytes (the sweeper's purge asks for it), and it
         * goes by DELE at QUIT, by the mailbox's deletion, or past expires_at between sessions
         * (locked_until: a session's maildrop lock, a lease in case the process dies with it). */
        .sqlite_sql =
            "CREATE TABLE mailboxes ("
            "  name TEXT PRIMARY KEY,"           /* lower case */
            "  password_hash TEXT NOT NULL,"     /* crypt(3) yescrypt: $y$... */
            "  retention INTEGER,"               /* seconds; NULL: --mailbox-ttl */
            "  locked_until INTEGER NOT NULL DEFAULT 0," /* Unix seconds */
            "  created_at INTEGER NOT NULL,"
            "  updated_at INTEGER NOT NULL"
            ");"
            "ALTER TABLE stored ADD COLUMN mailbox TEXT;"
            "CREATE INDEX stored_mailbox ON stored (mailbox, created_at) WHERE mailbox IS NOT NULL;",
        .postgres_sql =
            "CREATE TABLE mailboxes ("
            "  name TEXT COLLATE \"C\" PRIMARY KEY,"
            "  password_hash TEXT NOT NULL,"
            "  retention BIGINT,"
            "  locked_until BIGINT NOT NULL DEFAULT 0,"
            "  created_at BIGINT NOT NULL,"
            "  updated_at BIGINT NOT NULL"
            ");"
            "ALTER TABLE stored ADD COLUMN mailbox TEXT COLLATE \"C\";"
            "CREATE INDEX stored_mailbox ON stored (mailbox, created_at) WHERE mailbox IS NOT NULL;",
    },
    {
        .version = 7,
        .description = "route table version and change notifications",
        /* One counter, bumped in the transaction of every change to routes: a node whose
         * notification connection is down compares it every half second (SPEC §8).  On
         * PostgreSQL the same trigger sends NOTIFY inlet_routes with the new version, which the
         * server delivers at COMMIT to every listening node: the routes of every node follow
         * within a second, whoever wrote them (any node's API, inlet migrate, an operator's
         * SQL).  SQLite keeps the counter only (one process owns the database). */
        .sqlite_sql =
            "CREATE TABLE routes_version ("
            "  id INTEGER PRIMARY KEY CHECK (id = 1),"
            "  version INTEGER NOT NULL"
            ");"
            "INSERT INTO routes_version (id, version) VALUES (1, 0);"
            "CREATE TRIGGER routes_changed_insert AFTER INSERT ON routes"
            "  BEGIN UPDATE routes_version SET version = version + 1; END;"
            "CREATE TRIGGER routes_changed_update AFTER UPDATE ON routes"
            "  BEGIN UPDATE routes_version SET version = version + 1; END;"
            "CREATE TRIGGER routes_changed_delete AFTER DELETE ON routes"
            "  BEGIN UPDATE routes_version SET version = version + 1; END;",
        .postgres_sql =
            "CREATE TABLE routes_version ("
            "  id INTEGER PRIMARY KEY CHECK (id = 1),"
            "  version BIGINT NOT NULL"
            ");"
            "INSERT INTO routes_version (id, version) VALUES (1, 0);"
            "CREATE FUNCTION routes_changed() RETURNS trigger LANGUAGE plpgsql AS $$"
            " DECLARE v BIGINT;"
            " BEGIN"
            "   UPDATE routes_version SET version = version + 1 WHERE id = 1"
            "     RETURNING version INTO v;"
            "   PERFORM pg_notify('inlet_routes', v::text);"
            "   RETURN NULL;"
            " END $$;"
            "CREATE TRIGGER routes_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON routes"
            "  FOR EACH STATEMENT EXECUTE FUNCTION routes_changed();",
    },
    {
        .version = 8,
        .description = "claims on shared work",
        /* Several nodes on one PostgreSQL (SPEC §8): a delivery and an accepted message not yet
         * routed carry the node that took it (claimed_by) and until when (lease_until, Unix
         * milliseconds of the database server's clock; deliveries.lease_until was reserved in
         * step 2 and never written before).  NULL: nobody's, anyone may claim it.  On SQLite
         * (one node per data dir) the columns stay NULL: the claims are in-process there. */
        .sqlite_sql = "ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;"
                      "ALTER TABLE messages ADD COLUMN claimed_by TEXT;"
                      "ALTER TABLE messages ADD COLUMN lease_until INTEGER;",
        .postgres_sql = "ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;"
                        "ALTER TABLE messages ADD COLUMN claimed_by TEXT;"
                        "ALTER TABLE messages ADD COLUMN lease_until BIGINT;",
    },
    {
        .version = 9,
        .description = "message bodies kept uncompressed on PostgreSQL",
        /* PostgreSQL compressed every body with pglz (TOAST's default): at 64 KiB that was the
         * backend's top symbol, paid again by every node's database for every message, while real
         * mail bodies are mostly base64 of already compressed attachments that pglz cannot
         * shrink.  EXTERNAL keeps TOAST's out-of-line storage without the compression.  SQLite
         * keeps bodies in its body log (step 5): nothing to do there. */
        .sqlite_sql = "SELECT 1;",
        .postgres_sql = "ALTER TABLE messages ALTER COLUMN raw SET STORAGE EXTERNAL;",
    },
    {
        .version = 10,
        .description = "sender-authentication verdicts, once per message",
        /* The "authentication" object (SPEC §2 "Sender authentication") of a message checked at
         * receipt, as compact JSON, for its events: written with the routing outcome, once per
         * message whatever its recipients and events (issue 13: nothing copied into every event
         * row), read by the events API through the primary key.  Outlives the message's row: the
         * sweeper deletes it once the message and all of its events are gone (message ids start
         * with their arrival second, so the key orders the candidates by age). */
        .sqlite_sql = "CREATE TABLE message_auth ("
                      "  message_id TEXT PRIMARY KEY,"
                      "  authentication TEXT NOT NULL"
                      ");", /* a rowid table: inlet migrate copies tables page by rowid */
        .postgres_sql = "CREATE TABLE message_auth ("
                        "  message_id TEXT COLLATE \"C\" PRIMARY KEY,"
                        "  authentication TEXT NOT NULL"
                        ");",
    },
    {
        .version = 11,
        .description = "a routed message is noted for the purge only when nothing keeps it",
        /* Step 3's purge_on_routed noted every message at its routing, and the sweeper then read
         * the note, found the message kept by its stored copy or its pending delivery, and
         * deleted the note: a row written and deleted per message for nothing (two b-tree pages,
         * issue 13).  The routing outcome now notes its message itself when it plans no stored
         * copy and no delivery (store_write_outcome, both backends); whatever keeps a message
         * still notes it when it goes (the other triggers of step 3). */
        .sqlite_sql = "DROP TRIGGER purge_on_routed;",
        .postgres_sql = "DROP TRIGGER purge_on_routed ON messages;"
                        "DROP FUNCTION purge_note_new_id();",
    },
    {
        .version = 12,
        .description = "a maildrop lock names its session and is a short, renewed lease",
        /* locked_until was a lease of an hour (the longest session) plus a minute: a node that
         * died holding a lock on a shared database kept the mailbox from every poller for up to
         * that long.  The lock is now --lease-seconds long and renewed by its session while it
         * lives (engine/mailboxes.c), and lock_owner names that session, so that a session whose
         * lease ran out and was taken by another renews nothing and commits none of its DELEs. */
        .sqlite_sql = "ALTER TABLE mailboxes ADD COLUMN lock_owner TEXT NOT NULL DEFAULT '';",
        .postgres_sql = "ALTER TABLE mailboxes ADD COLUMN lock_owner TEXT COLLATE \"C\" NOT NULL DEFAULT '';",
    },
    {
        .version = 13,
        .description = "web console sessions in the database",
        /* They were held in each process's memory: behind a load balancer, a login made on one
         * node was unknown to the others, and a restart logged everyone out.  digest: the hex
         * SHA-256 of the cookie's token (never a usable cookie); seq: the logins' order; at most
         * API_CONSOLE_SESSIONS_MAX rows (storage/console.c). */
        .sqlite_sql = "CREATE TABLE console_sessions ("
                      "  digest TEXT PRIMARY KEY,"
                      "  csrf TEXT NOT NULL,"
                      "  expires_at INTEGER NOT NULL,"
                      "  created_at INTEGER NOT NULL,"
                      "  seq INTEGER NOT NULL"
                      ");",
        .postgres_sql = "CREATE TABLE console_sessions ("
                        "  digest TEXT COLLATE \"C\" PRIMARY KEY,"
                        "  csrf TEXT NOT NULL,"
                        "  expires_at BIGINT NOT NULL,"
                        "  created_at BIGINT NOT NULL,"
                        "  seq BIGINT NOT NULL"
                        ");",
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
