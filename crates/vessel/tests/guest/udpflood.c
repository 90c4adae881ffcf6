/*
 * udpflood: a guest-side load generator for the box tests. Sends UDP datagrams of SIZE bytes to
 * IP:PORT as fast as the guest's stack takes them for SECONDS seconds; send errors (ENOBUFS
 * from a full queue, ECONNREFUSED) are counted and the loop goes on. Prints
 * "udpflood sent=N bytes=B errors=E". Built statically with gcc at test time (never committed as
 * a binary) and appended to the guest initramfs as /bin/udpflood.
 *
 * usage: udpflood IP PORT SECONDS SIZE [BYTES_PER_SEC]
 *
 * With BYTES_PER_SEC the sends are paced to that rate (a flood that saturates a slower path
 * without burning a CPU on sends that the first queue drops).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: udpflood IP PORT SECONDS SIZE [BYTES_PER_SEC]\n");
        return 2;
    }
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
    if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) {
        fprintf(stderr, "udpflood: bad address %s\n", argv[1]);
        return 2;
    }
    double seconds = atof(argv[3]);
    size_t size = (size_t)atol(argv[4]);
    if (size == 0 || size > 65507) {
        fprintf(stderr, "udpflood: size must be 1..65507\n");
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("udpflood: socket");
        return 1;
    }
    char *buf = calloc(1, size);
    unsigned long long sent = 0, bytes = 0, errors = 0;
    double rate = argc == 6 ? atof(argv[5]) : 0;
    double start = now();
    double end = start + seconds;
    while (now() < end) {
        if (rate > 0 && bytes > rate * (now() - start)) {
            usleep(1000);
            continue;
        }
        for (int i = 0; i < 64; i++) {
            if (sendto(fd, buf, size, 0, (struct sockaddr *)&to, sizeof to) < 0) {
                errors++;
                usleep(1000);
            } else {
                sent++;
                bytes += size;
            }
        }
    }
    printf("udpflood sent=%llu bytes=%llu errors=%llu\n", sent, bytes, errors);
    return 0;
}
