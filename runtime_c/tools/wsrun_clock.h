/* The clock of wsrun's bench command: wall time on a host, instructions under emulation. */
#ifndef WSRUN_CLOCK_H
#define WSRUN_CLOCK_H

#include <stdint.h>

uint64_t wsrun_clock_now(void);       /* ticks of the clock below */
extern const double wsrun_clock_scale; /* units per tick */
extern const char *const wsrun_clock_unit;
extern const char *const wsrun_clock_note;

/* Switches timed together (one is below a host clock's resolution). */
#ifndef WSRUN_SWITCH_BATCH
#define WSRUN_SWITCH_BATCH 1000
#endif

#endif
