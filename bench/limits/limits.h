/* What the C limit programs share: one clock (CLOCK_MONOTONIC, the clock of every benchmark
 * process) and sorting samples for their quantiles. */
#ifndef ARROW_SHM_BENCH_LIMITS_H
#define ARROW_SHM_BENCH_LIMITS_H
#include <stdlib.h>
#include <time.h>

static inline double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static inline int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Sorts `samples` (ascending), so that sample[n * q] is the q-quantile. */
static inline void sort_samples(double *samples, int n) {
  qsort(samples, (size_t)n, sizeof(double), cmp_double);
}
#endif
