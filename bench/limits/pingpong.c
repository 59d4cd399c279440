/* The physical limit for the stream benchmark (npm run bench:stream): two processes pass a token
 * back and forth through one shared cache line, either busy-waiting on it (spin) or sleeping on an
 * eventfd each (the ring's wake-up path), and print the one-way latency (round trip / 2) as JSON. */
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
  printf("{\"rounds\": %d, \"spin_median_us\": %.3f, \"spin_p99_us\": %.3f, \"eventfd_median_us\": %.3f, \"eventfd_p99_us\": %.3f}\n",
         rounds, spin[rounds / 2], spin[rounds * 99 / 100], sleep[rounds / 2], sleep[rounds * 99 / 100]);
  return 0;
}
