/*
 * tcpblast: one TCP stream of a given size, timed by the receiver, for the guest-to-guest
 * throughput benchmarks (busybox nc moves data in small reads and writes, so it measures its
 * own system calls as much as the network).
 *
 *   tcpblast recv PORT             accepts one connection, reads it to the end in 64 KiB reads,
 *                                  prints "TCPBLAST received=N seconds=S" (S from the first
 *                                  byte to the end, by CLOCK_MONOTONIC), then
 *                                  "TCPBLAST udp_noports=K": the UDP datagrams this guest
 *                                  received for closed ports over the same span (a competing
 *                                  flood's share, in the fairness tests)
 *   tcpblast send IP PORT BYTES    connects (retrying for 60 s while refused), writes BYTES in
 *                                  64 KiB writes, prints "TCPBLAST sent=N"
 *
 * Built statically with gcc at test time (never committed as a binary).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 65536

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* UDP datagrams received for closed ports so far (NoPorts in /proc/net/snmp), 0 if unknown. */
static unsigned long long udp_noports(void)
{
    FILE *f = fopen("/proc/net/snmp", "r");
    char line[512];
    unsigned long long in = 0, noports = 0;
    int udp_lines = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "Udp: ", 5) == 0 && ++udp_lines == 2)
            sscanf(line + 5, "%llu %llu", &in, &noports);
    fclose(f);
    return noports;
}

static int receive(int port)
{
    int one = 1;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1)) {
        perror("tcpblast: listen");
        return 1;
    }
    int s = accept(l, NULL, NULL);
    if (s < 0) {
        perror("tcpblast: accept");
        return 1;
    }
    static char buf[CHUNK];
    unsigned long long got = 0;
    double start = 0;
    unsigned long long noports_start = 0;
    for (;;) {
        ssize_t n = read(s, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (got == 0) {
            start = now();
            noports_start = udp_noports();
        }
        got += n;
    }
    double seconds = got ? now() - start : 0.0;
    unsigned long long noports = got ? udp_noports() - noports_start : 0;
    printf("TCPBLAST received=%llu seconds=%.3f\n", got, seconds);
    printf("TCPBLAST udp_noports=%llu\n", noports);
    return 0;
}

static int send_bytes(const char *ip, int port, unsigned long long bytes)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        fprintf(stderr, "tcpblast: bad address %s\n", ip);
        return 2;
    }
    int s = -1;
    for (int i = 0; i < 600; i++) {
        s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0)
            break;
        close(s);
        s = -1;
        usleep(100000);
    }
    if (s < 0) {
        perror("tcpblast: connect");
        return 1;
    }
    static char buf[CHUNK];
    for (int i = 0; i < CHUNK; i++)
        buf[i] = (char)(i * 7);
    unsigned long long sent = 0;
    while (sent < bytes) {
        size_t want = bytes - sent < CHUNK ? bytes - sent : CHUNK;
        ssize_t n = write(s, buf, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            perror("tcpblast: write");
            return 1;
        }
        sent += n;
    }
    close(s);
    printf("TCPBLAST sent=%llu\n", sent);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "recv") == 0)
        return receive(atoi(argv[2]));
    if (argc == 5 && strcmp(argv[1], "send") == 0)
        return send_bytes(argv[2], atoi(argv[3]), strtoull(argv[4], NULL, 10));
    fprintf(stderr, "usage: tcpblast recv PORT | tcpblast send IP PORT BYTES\n");
    return 2;
}
