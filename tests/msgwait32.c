/* A task waiting in msgrcv through the i386 system call entry (int $0x80), as a 32-bit
 * program on an x86_64 kernel does: /proc/PID/task/TID/syscall then shows i386's number
 * and arguments, not x86_64's.
 *
 *   msgwait32 direct MSQID   msgrcv, i386 number 401 (Linux 5.1+)
 *   msgwait32 ipc MSQID      ipc(MSGRCV | 1 << 16, MSQID, 64, 0, buf), i386 number 117
 *
 * The buffer lies below 4 GiB (MAP_32BIT): a 32-bit call can only name such addresses.
 * Exits 1 when msgrcv fails (it is killed while it waits, in the tests). */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    int msqid = atoi(argv[2]);
    char *buf = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    long ret;
    if (buf == MAP_FAILED)
        return 2;
    if (strcmp(argv[1], "direct") == 0)
        __asm__ volatile("int $0x80"
                         : "=a"(ret)
                         : "a"(401L), "b"(msqid), "c"(buf), "d"(64), "S"(0), "D"(0)
                         : "memory");
    else
        __asm__ volatile("int $0x80"
                         : "=a"(ret)
                         : "a"(117L), "b"(12 | 1 << 16), "c"(msqid), "d"(64), "S"(0), "D"(buf)
                         : "memory");
    return ret < 0;
}
