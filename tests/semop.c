/* semop(2) from a process of its own, for tests/test_sem.py (built there with gcc).
 *
 *   semop SEMID stay|exit NUM:OP[:u] ...
 *
 * One semop call with every NUM:OP given (OP -1 decrements, +1 increments, 0 waits for
 * zero; ":u" adds SEM_UNDO, undone by the kernel when this process exits or is killed).
 * Prints "done" once the call returned (a call that blocks prints nothing until then:
 * a waiter), or "error ERRNO" (EIDRM when the set was removed under a waiter). Then
 * exits, or with "stay" waits to be killed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sem.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: semop SEMID stay|exit NUM:OP[:u] ...\n");
        return 2;
    }
    int semid = atoi(argv[1]);
    int stay = strcmp(argv[2], "stay") == 0;
    int n = argc - 3;
    struct sembuf ops[64];
    if (n > 64)
        return 2;
    for (int i = 0; i < n; i++) {
        char *arg = argv[3 + i];
        ops[i].sem_num = (unsigned short)strtoul(arg, &arg, 10);
        ops[i].sem_op = (short)strtol(arg + 1, &arg, 10);
        ops[i].sem_flg = strcmp(arg, ":u") == 0 ? SEM_UNDO : 0;
    }
    if (semop(semid, ops, (size_t)n) != 0) {
        printf("error %d\n", errno);
        fflush(stdout);
        return 1;
    }
    printf("done\n");
    fflush(stdout);
    while (stay)
        pause();
    return 0;
}
