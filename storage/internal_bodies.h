/* storage/internal_bodies.h — the body log of the SQLite backend (internal to storage/).
 *
 * Message bytes live in append-only segment files in a directory beside the database
 * (<database>-bodies/<segment number>), not in the messages row: written once, synced once per
 * group commit before the COMMIT of the rows that point at them (docs/internals/storage.md,
 * "Bodies").  A row holds (body_segment, body_offset, size, body_crc); a body that no committed
 * row points at is garbage, and a segment that no row points at is deleted by the sweeper.
 *
 * Threads: append, adopt, sync and collect belong to the writer thread; read and map may be
 * called from any thread (each opens the segment by name); spool files are written by their own
 * caller and handed to the writer. */
#ifndef INLET_STORAGE_BODIES_H
#define INLET_STORAGE_BODIES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/internal.h"

struct store_bodies;

/* Where one body is: segment number, offset in it, length, CRC-32 (zlib's) of the bytes. */
struct store_body_ref {
    int64_t segment;
    int64_t offset;
    int64_t len;
    uint32_t crc;
};

/* Opens (creating it 0700) the directory `dir`; the first append starts a new segment numbered
 * past every segment there (a segment is never appended to after a restart).  NULL with *err. */
struct store_bodies *store_bodies_open(const char *dir, char **err);
void store_bodies_close(struct store_bodies *b);
const char *store_bodies_dir(const struct store_bodies *b);

/* Writer: appends `len` bytes to the open segment (a new one when it is full) and says where
 * they are.  Not durable before store_bodies_sync().  A failure (STORE_ERR_FULL on ENOSPC or
 * EDQUOT, else STORE_ERR_IO) leaves nothing a row could point at. */
enum store_status store_bodies_append(struct store_bodies *b, const uint8_t *p, size_t len,
                                      struct store_body_ref *ref, char **err);
/* Writer: makes every append and adoption since the last sync durable: fdatasync of the open
 * segment, of each adopted spool, then of the directory when a file was created or renamed in
 * it.  After a failed sync the open segment is abandoned (its page cache can no longer be
 * trusted) and the next append starts a new one. */
enum store_status store_bodies_sync(struct store_bodies *b, char **err);

/* Any thread: the body at `ref` into *out (malloc'd, never NULL; len bytes), its CRC checked.
 * STORE_ERR_NOT_FOUND when its segment is gone (the message was purged meanwhile), STORE_ERR_IO
 * when the bytes are short or damaged.  `id` names the message in *err. */
enum store_status store_bodies_read(struct store_bodies *b, const struct store_body_ref *ref,
                                    const char *id, uint8_t **out, char **err);
/* The same as a read-only mapping (PROT_READ: never write through *data): *data points at the
 * body inside *map (map_len bytes, to
 * munmap); the CRC is not checked here (the bytes are paged in by whoever reads them).  A body
 * of length 0 gives *map NULL and *data "". */
enum store_status store_bodies_map(struct store_bodies *b, const struct store_body_ref *ref,
                                   const char *id, uint8_t **data, void **map,
                                   size_t *map_len, char **err);

/* Writer: deletes every segment for which in_use(arg, segment) is false (a test on the writer's
 * transaction, in which the rows of the batch in progress count; the open segment too, then the
 * next append starts a new one).  Nothing is deleted
 * while a backup holds the log (store_bodies_hold).  *freed: segments deleted; *bytes: their
 * size. */
enum store_status store_bodies_collect(struct store_bodies *b, bool (*in_use)(void *arg, int64_t segment),
                                       void *arg, uint64_t *freed, uint64_t *bytes, char **err);
/* Any thread: a backup copies bodies out of the log: while held (a count), nothing is deleted. */
void store_bodies_hold(struct store_bodies *b, bool hold);
/* Bytes of every segment file (the gauges' database size). */
int64_t store_bodies_size(struct store_bodies *b);

/* ---- spools: a body written while it arrives (store.h: store_spool_begin, _append, _discard) */
/* Any thread: a new spool file in the log's directory (named so that collect never takes it and
 * the next open deletes it). */
enum store_status store_spool_open(struct store_bodies *b, struct store_spool **out, char **err);
size_t store_spool_len(const struct store_spool *sp);
/* Writer: the spool becomes a segment of its own (renamed to the next segment number; synced by
 * the next store_bodies_sync); *ref says where its body is.  The file stays when the spool is
 * freed after that (store_spool_discard). */
enum store_status store_bodies_adopt(struct store_bodies *b, struct store_spool *sp,
                                     struct store_body_ref *ref, char **err);

#endif
