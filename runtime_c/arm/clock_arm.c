/* wsrun's clock under QEMU: SysTick on the processor clock, with a wrap counter.  Run with
 * `-icount shift=0` (one instruction = 1 ns of virtual time) on mps2-an386, whose 25 MHz clock
 * gives one tick per 40 instructions: the figures are instructions under emulation, not cycles
 * (QEMU does not model the Cortex-M4's timing).  The stack is measured by painting: fill the
 * free stack below the caller with a pattern, run, find the deepest word changed. */
#include "wsrun_clock.h"

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

const double wsrun_clock_scale = 40.0;
const char *const wsrun_clock_unit = "instructions";
const char *const wsrun_clock_note = "instructions under QEMU -icount shift=0, SysTick at 40 per tick";

static volatile uint32_t wraps;
static int started;

void SysTick_Handler(void) { ++wraps; }

uint64_t wsrun_clock_now(void) {
    uint32_t before, value;
    if (!started) {
        SYST_RVR = 0xFFFFFFu;
        SYST_CVR = 0;
        SYST_CSR = 7u; /* enable, interrupt on wrap, processor clock */
        started = 1;
    }
    do {
        before = wraps;
        value = SYST_CVR;
    } while (before != wraps);
    return ((uint64_t)before << 24) + (0xFFFFFFu - value);
}

#define STACK_PAINT_WORDS 4096u /* 16 KiB below the caller's frame */
#define STACK_PATTERN 0xA5C3E1F7u

__attribute__((noinline)) size_t wsrun_stack_used(void (*fn)(void *), void *arg) {
    uint32_t *sp, *low, *p;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    low = sp - STACK_PAINT_WORDS;
    for (p = low; p < sp; ++p) *(volatile uint32_t *)p = STACK_PATTERN;
    fn(arg);
    for (p = low; p < sp && *p == STACK_PATTERN; ++p) continue;
    return (size_t)(sp - p) * sizeof(uint32_t);
}
