/* engine/engine.h — lifecycle of `inlet serve`: the only module that wires the others. */
#ifndef INLET_ENGINE_H
#define INLET_ENGINE_H

struct inlet_config;

/* Runs the engine until SIGTERM/SIGINT; returns the process exit status. */
int engine_serve(struct inlet_config *cfg);

#endif
