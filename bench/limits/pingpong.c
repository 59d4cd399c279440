/* The physical limit for the stream benchmark (npm run bench:stream): two processes pass a token
 * back and forth through one shared cache line, either busy-waiting on it (spin) or sleeping on an
 * eventfd each (the ring's wake-up path), and print the one-way latency (round trip / 2) as JSON.
 * Then the wake-up of an idle reader: every 2 ms the parent stamps the time and writes the child's
 * eventfd; the child, asleep in read() since the last one, records send → wake-up (what the
 * stream bench's idle rows measure: a reader that slept, not one kept warm by ping-pong). */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "limits.h"


/* turn: even = parent's move, odd = child's move. */
static void run(int rounds, int sleeping, _Atomic uint64_t *turn, int to_child, int to_parent, double *out) {
  pid_t pid = fork();
  if (pid < 0) { perror("fork"); exit(1); }
  if (pid == 0) {
    for (uint64_t i = 0; i < (uint64_t)rounds; i++) {
      uint64_t want = 2 * i + 1, v;
      /* Sleeping: exactly one blocking read per round (each side writes once per round). */
      if (sleeping && read(to_child, &v, sizeof v) < 0) _exit(1);
      while (atomic_load_explicit(turn, memory_order_acquire) != want) {}
      atomic_store_explicit(turn, want + 1, memory_order_release);
      if (sleeping) { v = 1; if (write(to_parent, &v, sizeof v) < 0) _exit(1); }
    }
    _exit(0);
  }
  for (int i = 0; i < rounds; i++) {
    uint64_t v;
    double t0 = now_us();
    atomic_store_explicit(turn, 2 * (uint64_t)i + 1, memory_order_release);
    if (sleeping) { v = 1; if (write(to_child, &v, sizeof v) < 0) exit(1); }
    if (sleeping && read(to_parent, &v, sizeof v) < 0) exit(1);
    while (atomic_load_explicit(turn, memory_order_acquire) != 2 * (uint64_t)i + 2) {}
    out[i] = (now_us() - t0) / 2;
  }
  waitpid(pid, NULL, 0);
  sort_samples(out, rounds);
}

/* out: rounds samples then one stamp, in memory shared with the child. The child answers on
 * to_parent, so a wake-up slower than the gap is never merged with the next one. */
static void idle_run(int rounds, long gap_ns, int to_child, int to_parent, double *out) {
  volatile double *stamp = out + rounds;
  pid_t pid = fork();
  if (pid < 0) { perror("fork"); exit(1); }
  if (pid == 0) {
    for (int i = 0; i < rounds; i++) {
      uint64_t v;
      if (read(to_child, &v, sizeof v) < 0) _exit(1);
      out[i] = now_us() - *stamp;
      v = 1;
      if (write(to_parent, &v, sizeof v) < 0) _exit(1);
    }
    _exit(0);
  }
  struct timespec gap = {gap_ns / 1000000000L, gap_ns % 1000000000L};
  for (int i = 0; i < rounds; i++) {
    uint64_t v = 1;
    nanosleep(&gap, NULL);
    *stamp = now_us();
    if (write(to_child, &v, sizeof v) < 0) exit(1);
    if (read(to_parent, &v, sizeof v) < 0) exit(1);
  }
  waitpid(pid, NULL, 0);
  sort_samples(out, rounds);
}

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 20000;
  if (rounds < 10) rounds = 10;
  _Atomic uint64_t *turn = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  int to_child = eventfd(0, EFD_CLOEXEC), to_parent = eventfd(0, EFD_CLOEXEC);
  double *spin = malloc(rounds * sizeof *spin), *sleep = malloc(rounds * sizeof *sleep);
  if (turn == MAP_FAILED || to_child < 0 || to_parent < 0 || !spin || !sleep) { perror("setup"); return 1; }
  atomic_store(turn, 0);
  run(rounds, 0, turn, to_child, to_parent, spin);
  atomic_store(turn, 0);
  run(rounds, 1, turn, to_child, to_parent, sleep);
  int idle_rounds = 1000;
  double *idle = mmap(NULL, (idle_rounds + 1) * sizeof *idle, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (idle == MAP_FAILED) { perror("mmap"); return 1; }
  idle_run(idle_rounds, 2000000L, to_child, to_parent, idle);
  printf("{\"rounds\": %d, \"spin_median_us\": %.3f, \"spin_p99_us\": %.3f, \"eventfd_median_us\": %.3f, \"eventfd_p99_us\": %.3f, "
         "\"idle_rounds\": %d, \"idle_gap_ms\": 2, \"idle_eventfd_median_us\": %.3f, \"idle_eventfd_p99_us\": %.3f}\n",
         rounds, spin[rounds / 2], spin[rounds * 99 / 100], sleep[rounds / 2], sleep[rounds * 99 / 100],
         idle_rounds, idle[idle_rounds / 2], idle[idle_rounds * 99 / 100]);
  return 0;
}
