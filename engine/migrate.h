/* engine/migrate.h — `inlet migrate --from <data-dir or SQLite file> --to postgresql://...`
 * (SPEC §8): a single node's database moved into the database several nodes share. */
#ifndef INLET_ENGINE_MIGRATE_H
#define INLET_ENGINE_MIGRATE_H

/* argv: the arguments after "migrate".  Exit status: 0 copied (or copied before), 1 refused or
 * failed (stderr says why), 2 usage. */
int engine_migrate_command(int argc, char **argv);

#endif
