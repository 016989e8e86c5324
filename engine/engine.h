/* engine/engine.h — lifecycle of `inlet serve`: the only module that wires the others. */
#ifndef INLET_ENGINE_H
#define INLET_ENGINE_H

struct inlet_config;

/* Runs the engine until SIGTERM/SIGINT; returns the process exit status. */
int engine_serve(struct inlet_config *cfg);

/* `inlet keys`: prints "api_key=..." and "signing_key=..." (the keys `inlet serve` uses with
 * these settings: a setting's, else the database's); 1 with a message when there are none yet. */
int engine_print_keys(struct inlet_config *cfg);

#endif
