/* altstack_probe.c: how much of a thread's alternate signal stack the
 * shim's SIGPROF handler uses.
 *
 * Each thread (the main thread and --threads workers) gets an alternate
 * signal stack of the size Rust's std gives every thread
 * (max(SIGSTKSZ = 8192, getauxval(AT_MINSIGSTKSZ)) bytes), painted with a
 * byte pattern. First a trivial SA_ONSTACK handler of our own runs on it once
 * (the kernel's signal frame plus an empty handler: the baseline), then the
 * stack is painted again and the thread burns CPU (with a malloc/free now and
 * then) for --seconds while rsprof self-samples it (the sampler is armed
 * after the program started, as the fallback does). At the end each thread
 * prints how deep each run touched its stack, counted from the top:
 *   thread=N size=S minsigstksz=M baseline=B deepest=D
 * D - B is what the shim's handler used beyond the kernel's frame.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef AT_MINSIGSTKSZ
#define AT_MINSIGSTKSZ 51
#endif

#define PAINT 0xA5
#define RUST_SIGSTKSZ 8192ul /* libc::SIGSTKSZ as Rust's std uses it (x86-64, aarch64 differ) */

static double g_seconds = 3.0;
static pthread_mutex_t g_print = PTHREAD_MUTEX_INITIALIZER;

static size_t altstack_size(void)
{
    size_t min = (size_t)getauxval(AT_MINSIGSTKSZ);
    return min > RUST_SIGSTKSZ ? min : RUST_SIGSTKSZ;
}

static size_t deepest(const unsigned char *stack, size_t size)
{
    size_t i = 0;
    while (i < size && stack[i] == PAINT)
        i++;
    return size - i; /* bytes touched, counted from the top (the stack grows down) */
}

static void trivial(int sig)
{
    (void)sig;
    __asm__ __volatile__("" ::: "memory");
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

__attribute__((noinline)) static uint64_t burn(uint64_t x)
{
    for (int i = 0; i < 200000; i++)
        x = x * 6364136223846793005ull + 1442695040888963407ull;
    return x;
}

static void *probe(void *arg)
{
    long id = (long)arg;
    size_t size = altstack_size();
    unsigned char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                              -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    memset(mem, PAINT, size);
    stack_t ss = {.ss_sp = mem, .ss_size = size, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) {
        perror("sigaltstack");
        exit(2);
    }
    syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), SIGUSR2);
    size_t baseline = deepest(mem, size);
    memset(mem, PAINT, size);

    uint64_t x = (uint64_t)id + 1;
    double end = now() + g_seconds;
    while (now() < end) {
        x = burn(x);
        void *volatile block = malloc(64 + (x & 1023)); /* volatile: not optimised away */
        free(block);
    }
    size_t touched = deepest(mem, size);
    pthread_mutex_lock(&g_print);
    printf("thread=%ld size=%zu minsigstksz=%lu baseline=%zu deepest=%zu sink=%llu\n", id, size,
           getauxval(AT_MINSIGSTKSZ), baseline, touched, (unsigned long long)(x & 1));
    fflush(stdout);
    pthread_mutex_unlock(&g_print);
    return NULL;
}

int main(int argc, char **argv)
{
    long threads = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--seconds") == 0)
            g_seconds = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--threads") == 0)
            threads = atol(argv[i + 1]);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = trivial;
    sa.sa_flags = SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR2, &sa, NULL);
    pthread_t tids[64];
    if (threads > 64)
        threads = 64;
    for (long i = 0; i < threads; i++)
        pthread_create(&tids[i], NULL, probe, (void *)(i + 1));
    probe((void *)0);
    for (long i = 0; i < threads; i++)
        pthread_join(tids[i], NULL);
    return 0;
}
