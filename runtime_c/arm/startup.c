/* Start-up of wsrun on QEMU's mps2-an386 (Cortex-M4F) with semihosting: the vector table at
 * address 0, .data copied and .bss zeroed, the FPU enabled before any float instruction, argv
 * fetched from the emulator's command line, main's status returned through the semihosting
 * exit call.  Our own start-up, not newlib's rdimon crt0, which moves the stack to where the
 * emulator reports the heap (docs: shared notes on MCU emulation). */
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern void initialise_monitor_handles(void);
int main(int argc, char **argv);
void Reset_Handler(void);
void Fault_Handler(void);
void SysTick_Handler(void);

typedef union {
    void (*handler)(void);
    const void *stack;
} vector;

__attribute__((section(".vectors"), used)) const vector vectors[16] = {
    {.stack = &_estack}, {Reset_Handler},  {Fault_Handler}, {Fault_Handler}, {Fault_Handler}, {Fault_Handler},
    {Fault_Handler},     {0},              {0},             {0},             {0},             {Fault_Handler},
    {Fault_Handler},     {0},              {Fault_Handler}, {SysTick_Handler}};

/* A fault ends the program with status 99 instead of hanging the emulator. */
void Fault_Handler(void) { _exit(99); }

/* newlib's exit runs these; nothing to construct or destroy here. */
void _init(void) {}
void _fini(void) {}

static int semihost(int op, void *arg) {
    register int r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

#define SYS_GET_CMDLINE 0x15
#define MAX_ARGS 64

static char cmdline[4096];
static char *args[MAX_ARGS + 1];

static int split(char *s) {
    int n = 0;
    while (*s && n < MAX_ARGS) {
        while (*s == ' ') *s++ = 0;
        if (!*s) break;
        args[n++] = s;
        while (*s && *s != ' ') ++s;
    }
    args[n] = 0;
    return n;
}

void Reset_Handler(void) {
    uint32_t *src = &_sidata, *dst;
    struct {
        char *buffer;
        int length;
    } request;
    int argc = 0;
    for (dst = &_sdata; dst < &_edata;) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss;) *dst++ = 0;
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20; /* CPACR: full access to CP10 and CP11 (the FPU) */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
    initialise_monitor_handles();
    request.buffer = cmdline;
    request.length = (int)sizeof cmdline - 1;
    if (semihost(SYS_GET_CMDLINE, &request) == 0) {
        cmdline[request.length] = 0;
        argc = split(cmdline);
    }
    exit(main(argc, args));
}
