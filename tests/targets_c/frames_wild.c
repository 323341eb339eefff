/* frames_wild.c: allocations under broken frame-pointer chains.
 *
 * wild_call(n, bp) calls malloc(n) with %rbp set to `bp` (restored after),
 * so the shim's walk meets a garbage saved frame pointer right above the
 * hook. Values tried: null, small, odd, kernel, non-canonical, a heap block,
 * just below the stack pointer, the stack top, a self-loop and a downward
 * link in fake frames on the stack. Also built with -fomit-frame-pointer as a
 * whole (mode "omit"), where rbp holds whatever the code left in it.
 * x86-64 only. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *wild_call(size_t n, uintptr_t bp);
__asm__(".text\n"
        ".globl wild_call\n"
        ".type wild_call,@function\n"
        "wild_call:\n"
        "    push %rbp\n"
        "    mov %rsi, %rbp\n"
        "    call malloc@PLT\n"
        "    pop %rbp\n"
        "    ret\n"
        ".size wild_call, .-wild_call\n");

static volatile uintptr_t sink;

__attribute__((noinline)) static int recurse(int depth, size_t size)
{
    /* Scribble rbp-looking values around to confuse -fomit-frame-pointer code. */
    volatile uintptr_t junk[4] = {(uintptr_t)&junk, 0x7, (uintptr_t)-1, (uintptr_t)&depth};
    if (depth == 0) {
        void *p = malloc(size);
        sink = (uintptr_t)p + junk[1];
        free(p);
        return 1;
    }
    return recurse(depth - 1, size + 1) + (int)(junk[1] & 1);
}

static void *thread_main(void *arg)
{
    (void)arg;
    int n = 0;
    for (int i = 0; i < 200; i++)
        n += recurse(i % 90, 16);
    return (void *)(uintptr_t)n;
}

static void wild_values(void)
{
    uintptr_t here = (uintptr_t)__builtin_frame_address(0);
    uintptr_t heap = (uintptr_t)malloc(64);
    memset((void *)heap, 0x41, 64);
    /* Fake frames on our stack: a self-loop, a downward link, a link out. */
    uintptr_t fake[8];
    fake[0] = (uintptr_t)&fake[0]; /* self-loop */
    fake[1] = 0x401000;
    fake[2] = (uintptr_t)&fake[0]; /* goes down */
    fake[3] = 0x401000;
    fake[4] = 0xdeadbeefdeadbeefull; /* goes out */
    fake[5] = 0x401000;
    fake[6] = (uintptr_t)&fake[6] + 1; /* misaligned */
    fake[7] = 0x401000;
    uintptr_t values[] = {0,
                          1,
                          0x1001,
                          0xdeadbeefdeadbeefull,
                          0xffffffffffff0000ull,
                          0x0000800000000000ull,
                          heap,
                          heap + 3,
                          here - 4096,
                          here - 8,
                          (uintptr_t)&fake[0],
                          (uintptr_t)&fake[2],
                          (uintptr_t)&fake[4],
                          (uintptr_t)&fake[6],
                          (uintptr_t)&fake[0] + 4};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        void *p = wild_call(5000 + i, values[i]);
        if (p == NULL)
            exit(3);
        free(p);
    }
    free((void *)heap);
}

int main(int argc, char **argv)
{
    int omit = argc > 1 && strcmp(argv[1], "omit") == 0;
    if (!omit)
        wild_values();
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, thread_main, NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    thread_main(NULL);
    puts("done");
    return 0;
}
