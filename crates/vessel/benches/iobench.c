/* iobench: block I/O measured from inside a guest, for Vessel's benchmarks.
 *
 * Built statically on the host at benchmark time and added to the guest initramfs.
 * Usage: iobench DEVICE seqwrite MIB | seqread MIB | randread SECONDS
 * All I/O is O_DIRECT, so the guest's page cache is bypassed and every request reaches the
 * virtual device. Prints one line: "IOBENCH <mode> <MB/s or IOPS>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: iobench DEVICE seqwrite|seqread MIB | randread SECONDS\n");
        return 2;
    }
    const char *mode = argv[2];
    long arg = atol(argv[3]);
    int writing = strcmp(mode, "seqwrite") == 0;
    int fd = open(argv[1], (writing ? O_WRONLY : O_RDONLY) | O_DIRECT);
    if (fd < 0) { perror("open"); return 1; }
    off_t size = lseek(fd, 0, SEEK_END);
    void *buf;
    if (posix_memalign(&buf, 4096, 1 << 20)) return 1;
    memset(buf, 0x5a, 1 << 20);
    double t0 = now();
    if (strcmp(mode, "randread") == 0) {
        uint64_t x = 88172645463325252ull, ops = 0, blocks = size / 4096;
        while (now() - t0 < arg) {
            for (int i = 0; i < 64; i++) {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                if (pread(fd, buf, 4096, (off_t)(x % blocks) * 4096) != 4096) { perror("pread"); return 1; }
                ops++;
            }
        }
        printf("IOBENCH randread %.0f\n", ops / (now() - t0));
    } else {
        long mib = arg;
        if ((off_t)mib << 20 > size) { fprintf(stderr, "device too small\n"); return 1; }
        for (long i = 0; i < mib; i++) {
            ssize_t n = writing ? pwrite(fd, buf, 1 << 20, (off_t)i << 20) : pread(fd, buf, 1 << 20, (off_t)i << 20);
            if (n != 1 << 20) { perror(mode); return 1; }
        }
        if (writing && fdatasync(fd)) { perror("fdatasync"); return 1; }
        printf("IOBENCH %s %.1f\n", mode, mib / (now() - t0));
    }
    return 0;
}
