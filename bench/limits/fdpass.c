/* The physical limit of a hand-off (npm run bench): two C processes do what arrow-shm does for a
 * small table, with nothing else: the sender makes a memfd, writes SIZE bytes, seals it and passes
 * the fd with a 64-byte frame over a SOCK_SEQPACKET socket; the receiver (blocked in recvmsg) checks
 * the seals and size, maps it read-only, reads it, unmaps, closes, and answers with a 64-byte frame.
 * PAUSE_US: idle time between round trips, as the hand-off benchmark leaves between hand-offs (a
 * process that slept wakes slower than one that is busy: compare like with like).
 * Prints the round trips as JSON: {"size", "rounds", "pause_us", "median_us", "p99_us"}.
 * Usage: fdpass [SIZE=1024] [ROUNDS=20000] [PAUSE_US=0] */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "limits.h"


static void die(const char *what) {
  perror(what);
  exit(1);
}

static void send_frame(int sock, int fd) {
  char frame[64] = {0};
  struct iovec iov = {frame, sizeof frame};
  union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof(int))]; } control;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (fd >= 0) {
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
  if (sendmsg(sock, &msg, MSG_NOSIGNAL) != sizeof frame) die("sendmsg");
}

/* Returns the fd that came with the frame, or -1; exits on EOF. */
static int recv_frame(int sock) {
  char frame[65536];
  struct iovec iov = {frame, sizeof frame};
  union { struct cmsghdr align; char buf[CMSG_SPACE(16 * sizeof(int))]; } control;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf};
  ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  if (n <= 0) exit(0);
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  int fd = -1;
  if (c && c->cmsg_type == SCM_RIGHTS) memcpy(&fd, CMSG_DATA(c), sizeof(int));
  return fd;
}

int main(int argc, char **argv) {
  size_t size = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
  int rounds = argc > 2 ? atoi(argv[2]) : 20000;
  int pause_us = argc > 3 ? atoi(argv[3]) : 0;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) != 0) die("socketpair");
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    close(sv[0]);
    for (;;) {
      int fd = recv_frame(sv[1]);
      struct stat st;
      int seals = fcntl(fd, F_GET_SEALS);
      if (fstat(fd, &st) != 0 || seals < 0) die("fstat/F_GET_SEALS");
      volatile const uint8_t *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
      if (p == MAP_FAILED) die("mmap");
      uint8_t sum = 0;
      for (off_t i = 0; i < st.st_size; i += 4096) sum += p[i];
      (void)sum;
      munmap((void *)p, (size_t)st.st_size);
      close(fd);
      send_frame(sv[1], -1);
    }
  }
  close(sv[1]);
  uint8_t *data = malloc(size);
  memset(data, 7, size);
  int warmup = rounds / 10;
  double *rt = malloc(sizeof(double) * (size_t)rounds);
  for (int i = 0; i < rounds + warmup; i++) {
    if (pause_us > 0) usleep((useconds_t)pause_us);
    double t0 = now_us();
    int fd = memfd_create("fdpass", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size) die("memfd");
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) != 0) die("F_ADD_SEALS");
    send_frame(sv[0], fd);
    close(fd);
    recv_frame(sv[0]);
    if (i >= warmup) rt[i - warmup] = now_us() - t0;
  }
  close(sv[0]);
  waitpid(pid, NULL, 0);
  sort_samples(rt, rounds);
  printf("{\"size\": %zu, \"rounds\": %d, \"pause_us\": %d, \"median_us\": %.2f, \"p99_us\": %.2f}\n", size, rounds, pause_us, rt[rounds / 2], rt[(int)(rounds * 0.99)]);
  return 0;
}
