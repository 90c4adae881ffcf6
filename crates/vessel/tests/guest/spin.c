/*
 * spin: a CPU-bound guest workload whose own progress measures the CPU it was given, for the
 * scheduling box tests. It counts down loops of UNIT iterations forever and, once a second (by
 * the guest's monotonic clock, looked at after each loop), prints "WORK N steal=S t=T" to standard
 * output (N: loops done; S: the steal column of the guest's /proc/stat, in clock ticks: time
 * its vCPU was ready but the host ran something else; T: that monotonic clock, in seconds, so
 * a rate can be taken between any two lines). One line a second keeps the console
 * (a UART: an exit per byte) out of what is measured. Built statically with gcc at test time
 * (never committed as a binary) and appended to the guest initramfs as /bin/spin.
 *
 * usage: spin [UNIT]
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* The steal column of /proc/stat's first line, or -1. */
static long long steal_ticks(void)
{
    long long user, nice, system, idle, iowait, irq, softirq, steal;
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    int n = fscanf(f, "cpu %lld %lld %lld %lld %lld %lld %lld %lld", &user, &nice, &system,
                   &idle, &iowait, &irq, &softirq, &steal);
    fclose(f);
    return n == 8 ? steal : -1;
}

int main(int argc, char **argv)
{
    unsigned long unit = argc > 1 ? strtoul(argv[1], NULL, 0) : 1UL << 16;
    unsigned long long units = 0;
    struct timespec last, now;
    clock_gettime(CLOCK_MONOTONIC, &last);
    for (;;) {
        for (volatile unsigned long i = unit; i > 0; i--)
            ;
        units++;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long ns = (now.tv_sec - last.tv_sec) * 1000000000LL + (now.tv_nsec - last.tv_nsec);
        if (ns >= 1000000000LL) {
            last = now;
            printf("WORK %llu steal=%lld t=%lld.%09ld\n", units, steal_ticks(),
                   (long long)now.tv_sec, now.tv_nsec);
            fflush(stdout);
        }
    }
}
