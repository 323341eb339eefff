/* fork_exec.c: a forked child allocates (size CHILD_SIZE) and must never
 * reach the parent's ring; the parent allocates PARENT_SIZE before and after,
 * and runs /bin/true through fork+exec and through system(). Prints the
 * child's pid and whether RSPROF_SHM is still in the environment. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define PARENT_SIZE 55555
#define CHILD_SIZE 77777

__attribute__((noinline)) static void churn(size_t size, int n)
{
    for (int i = 0; i < n; i++) {
        void *p = malloc(size);
        if (p == NULL)
            exit(3);
        ((volatile char *)p)[0] = 1;
        free(p);
    }
}

int main(void)
{
    printf("env %s\n", getenv("RSPROF_SHM") ? "present" : "absent");
    churn(PARENT_SIZE, 10);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        churn(CHILD_SIZE, 1000);
        void *keep = malloc(CHILD_SIZE); /* live at exit */
        (void)keep;
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    printf("child %d status %d\n", (int)pid, status);
    churn(PARENT_SIZE, 10);

    pid_t ex = fork();
    if (ex == 0) {
        execl("/bin/true", "true", (char *)NULL);
        _exit(126);
    }
    waitpid(ex, &status, 0);
    printf("exec %d status %d\n", (int)ex, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    int rc = system("/bin/true");
    printf("system %d\n", rc);
    churn(PARENT_SIZE, 10);
    fflush(stdout);
    return 0;
}
