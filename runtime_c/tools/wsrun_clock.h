/* The clock of wsrun's bench command: wall time on a host, instructions under emulation; and
 * the stack an inference uses, measured on the Cortex-M. */
#ifndef WSRUN_CLOCK_H
#define WSRUN_CLOCK_H

#include <stddef.h>
#include <stdint.h>

uint64_t wsrun_clock_now(void);       /* ticks of the clock below */
extern const double wsrun_clock_scale; /* units per tick */
extern const char *const wsrun_clock_unit;
extern const char *const wsrun_clock_note;

/* Bytes of stack fn(arg) used, measured (0 where not measured: on a host). */
size_t wsrun_stack_used(void (*fn)(void *), void *arg);

/* Switches timed together (one is below a host clock's resolution). */
#ifndef WSRUN_SWITCH_BATCH
#define WSRUN_SWITCH_BATCH 1000
#endif

#endif
