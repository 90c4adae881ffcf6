/*
 * pagetouch PATH (guest side, packed by tests/boxed/mod.rs::guest_tools; the idle memory tax
 * test's busy guest): maps the file at PATH and reads one byte of each of its 4 KiB pages,
 * pass after pass, five passes a second, forever: a working set of exactly the file's size,
 * kept touched.
 */
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: pagetouch PATH\n");
        return 2;
    }
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size == 0) {
        fprintf(stderr, "pagetouch: %s is empty or unreadable\n", argv[1]);
        return 1;
    }
    const volatile unsigned char *p = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    struct timespec pause = {0, 200 * 1000 * 1000};
    unsigned long sum = 0;
    for (;;) {
        for (off_t o = 0; o < st.st_size; o += 4096)
            sum += p[o];
        nanosleep(&pause, NULL);
    }
    return (int)(sum & 1);
}
