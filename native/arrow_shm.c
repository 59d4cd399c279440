// arrow-shm native core: thin Node-API wrappers over the Linux system calls the library needs
// (memfd + seals, mmap, UNIX sockets with SCM_RIGHTS, readiness polling through libuv).
// Policy, protocol and validation live in TypeScript; every failure here becomes an
// ArrowShmError with code ERR_SYSCALL, errno and syscall, never a crash.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <node_api.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define MAX_FDS_PER_MESSAGE 16
// V8 refuses external ArrayBuffers over 4 GiB.
#define MAX_MAPPING_BYTES ((int64_t)1 << 32)

// ---------------------------------------------------------------------------------------------
// Error plumbing. The throw_* functions return NULL (undefined to JavaScript) so that a handler
// fails in one line: `return throw_errno(env, "fstat", errno);`.

typedef struct mapping mapping;

typedef struct {
  napi_ref error_class;  // ArrowShmError, handed over by the loader (src/native.ts)
  mapping* mappings;     // live mappings of this environment (main thread or one worker)
} addon_state;

static addon_state* state_of(napi_env env) {
  addon_state* st = NULL;
  napi_get_instance_data(env, (void**)&st);
  return st;
}

static napi_value throw_shm_error(napi_env env, const char* code, const char* message, int err, const char* syscall) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) return NULL;
  addon_state* st = state_of(env);
  napi_value ctor = NULL, msg, code_v, err_v, sys_v, instance;
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg);
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &code_v);
  if (err) napi_create_int32(env, err, &err_v); else napi_get_undefined(env, &err_v);
  if (syscall) napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sys_v); else napi_get_undefined(env, &sys_v);
  if (st && st->error_class) napi_get_reference_value(env, st->error_class, &ctor);
  if (ctor) {
    napi_value argv[4] = {code_v, msg, err_v, sys_v};
    if (napi_new_instance(env, ctor, 4, argv, &instance) == napi_ok) {
      napi_throw(env, instance);
      return NULL;
    }
  }
  napi_throw_error(env, code, message);
  return NULL;
}

static napi_value throw_errno(napi_env env, const char* syscall, int err) {
  char message[256];
  snprintf(message, sizeof message, "%s failed: %s (errno %d)", syscall, strerror(err), err);
  return throw_shm_error(env, "ERR_SYSCALL", message, err, syscall);
}

static napi_value throw_arg(napi_env env, const char* message) {
  return throw_shm_error(env, "ERR_INVALID_ARGUMENT", message, 0, NULL);
}

// Repeats a system call that a signal interrupted (EINTR); `expr` assigns the call's result.
#define RETRY_EINTR(expr) \
  while ((expr) < 0 && errno == EINTR) {}

#define CALL(env, expr)                                   \
  do {                                                    \
    if ((expr) != napi_ok) {                              \
      throw_arg(env, "internal Node-API call failed: " #expr); \
      return NULL;                                        \
    }                                                     \
  } while (0)

// Argument helpers: each throws ERR_INVALID_ARGUMENT and returns false on a bad value.
static bool arg_int(napi_env env, napi_value v, const char* what, int64_t lo, int64_t hi, int64_t* out) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  int64_t x = 0;
  if (t == napi_number) {
    double d;
    napi_get_value_double(env, v, &d);
    if (!(d >= (double)lo && d <= (double)hi) || d != (double)(int64_t)d) goto bad;
    x = (int64_t)d;
  } else if (t == napi_bigint) {
    bool lossless;
    napi_get_value_bigint_int64(env, v, &x, &lossless);
    if (!lossless || x < lo || x > hi) goto bad;
  } else {
    goto bad;
  }
  *out = x;
  return true;
bad : {
  char message[160];
  snprintf(message, sizeof message, "%s must be an integer in [%lld, %lld]", what, (long long)lo, (long long)hi);
  throw_arg(env, message);
  return false;
}
}

static bool arg_fd(napi_env env, napi_value v, int* fd) {
  int64_t x;
  if (!arg_int(env, v, "fd", 0, INT_MAX, &x)) return false;
  *fd = (int)x;
  return true;
}

static bool arg_bytes(napi_env env, napi_value v, uint8_t** data, size_t* len) {
  bool is_ta = false;
  napi_is_typedarray(env, v, &is_ta);
  if (is_ta) {
    napi_typedarray_type type;
    size_t length, offset;
    napi_value ab;
    void* base;
    napi_get_typedarray_info(env, v, &type, &length, &base, &ab, &offset);
    if (type != napi_uint8_array) goto bad;
    *data = base;
    *len = length;
    return true;
  }
bad:
  throw_arg(env, "expected a Uint8Array");
  return false;
}

static bool arg_string(napi_env env, napi_value v, char* buf, size_t cap, size_t* len) {
  if (napi_get_value_string_utf8(env, v, buf, cap, len) != napi_ok) {
    throw_arg(env, "expected a string");
    return false;
  }
  return true;
}

static bool is_function(napi_env env, napi_value v) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  return t == napi_function;
}

// A socket address: a path, or "@name" for the abstract namespace (no NUL after the name).
static bool arg_address(napi_env env, napi_value v, struct sockaddr_un* addr, socklen_t* addr_len) {
  char path[sizeof addr->sun_path + 2];
  size_t len;
  if (!arg_string(env, v, path, sizeof path, &len)) return false;
  if (len == 0 || len >= sizeof addr->sun_path) {
    throw_arg(env, "socket address must be 1 to 107 bytes long");
    return false;
  }
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (path[0] == '@') {
    addr->sun_path[0] = '\0';
    memcpy(addr->sun_path + 1, path + 1, len - 1);
    *addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
  } else {
    memcpy(addr->sun_path, path, len);
    *addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
  }
  return true;
}

// Handler preamble, in the manner of better-sqlite3's REQUIRE_ARGUMENT_* macros. ARGS(n) fetches
// the first n arguments (missing ones read as undefined; argc says how many were passed); each
// ARG_* line then declares one C variable from argv[i], or throws and returns from the handler.
// A variable is named after its JS parameter, because that name is the one error messages show.
// They expect the handler's parameters to be called env and info, and are not wrapped in
// do/while because the declarations must outlive the macro.
#define ARGS(n)       \
  size_t argc = (n);  \
  napi_value argv[n]; \
  CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL))
#define ARG_FD(i, var) \
  int var;             \
  if (!arg_fd(env, argv[i], &var)) return NULL
#define ARG_INT(i, var, lo, hi) \
  int64_t var;                  \
  if (!arg_int(env, argv[i], #var, lo, hi, &var)) return NULL
// Optional trailing integer: only checked when passed (so an explicit undefined is refused).
#define ARG_INT_OPT(i, var, lo, hi, fallback) \
  int64_t var = (fallback);                   \
  if (argc > (i) && !arg_int(env, argv[i], #var, lo, hi, &var)) return NULL
#define ARG_BOOL(i, var) \
  bool var;              \
  if (napi_get_value_bool(env, argv[i], &var) != napi_ok) return throw_arg(env, #var " must be a boolean")
#define ARG_BOOL_OPT(i, var, fallback) \
  bool var = (fallback);               \
  if (argc > (i) && napi_get_value_bool(env, argv[i], &var) != napi_ok) return throw_arg(env, #var " must be a boolean")
// A lenient flag: anything but a boolean means the fallback (never throws).
#define ARG_FLAG(i, var, fallback) \
  bool var = (fallback);           \
  napi_get_value_bool(env, argv[i], &var)
// A Uint8Array: var points at its first byte, len is its length.
#define ARG_BYTES(i, var, len) \
  uint8_t* var;                \
  size_t len;                  \
  if (!arg_bytes(env, argv[i], &var, &len)) return NULL
// A string of at most cap - 1 bytes (longer ones are cut), NUL-terminated; var##_len its length.
#define ARG_STRING(i, var, cap) \
  char var[cap];                \
  size_t var##_len;             \
  if (!arg_string(env, argv[i], var, sizeof var, &var##_len)) return NULL
// A socket address string (see arg_address), ready for bind/connect as var, var##_len.
#define ARG_ADDRESS(i, var) \
  struct sockaddr_un var;   \
  socklen_t var##_len;      \
  if (!arg_address(env, argv[i], &var, &var##_len)) return NULL
#define ARG_FUNCTION(i, var) \
  napi_value var = argv[i];  \
  if (!is_function(env, var)) return throw_arg(env, #var " must be a function")
// A live poller handle (see unwrap_poller).
#define ARG_POLLER(i, var)                   \
  poller* var = unwrap_poller(env, argv[i]); \
  if (!var) return NULL

static napi_value make_int(napi_env env, int64_t x) {
  napi_value v;
  napi_create_int64(env, x, &v);
  return v;
}

static napi_value make_bool(napi_env env, bool b) {
  napi_value v;
  napi_get_boolean(env, b, &v);
  return v;
}

static void set_int(napi_env env, napi_value object, const char* name, int64_t x) {
  napi_set_named_property(env, object, name, make_int(env, x));
}

// ---------------------------------------------------------------------------------------------
// memfd, seals, fstat

// memfdCreate(name, size, allowSealing): fd. Without sealing it is the seed's kind of segment.
static napi_value memfd_create_js(napi_env env, napi_callback_info info) {
  ARGS(3);
  ARG_STRING(0, name, 250);
  ARG_INT(1, size, 0, INT64_MAX);
  ARG_BOOL_OPT(2, allowSealing, true);
  int fd = memfd_create(name, MFD_CLOEXEC | (allowSealing ? MFD_ALLOW_SEALING : 0));
  if (fd < 0) return throw_errno(env, "memfd_create", errno);
  if (size > 0 && ftruncate(fd, (off_t)size) != 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, "ftruncate", err);
  }
  return make_int(env, fd);
}

static napi_value ftruncate_js(napi_env env, napi_callback_info info) {
  ARGS(2);
  ARG_FD(0, fd);
  ARG_INT(1, size, 0, INT64_MAX);
  if (ftruncate(fd, (off_t)size) != 0) throw_errno(env, "ftruncate", errno);
  return NULL;
}

// fstat(fd): { size, mode, ino, dev }  (ino/dev as numbers: exact below 2^53)
static napi_value fstat_js(napi_env env, napi_callback_info info) {
  ARGS(1);
  ARG_FD(0, fd);
  struct stat st;
  if (fstat(fd, &st) != 0) return throw_errno(env, "fstat", errno);
  napi_value out;
  napi_create_object(env, &out);
  set_int(env, out, "size", (int64_t)st.st_size);
  set_int(env, out, "mode", (int64_t)st.st_mode);
  set_int(env, out, "ino", (int64_t)st.st_ino);
  set_int(env, out, "dev", (int64_t)st.st_dev);
  return out;
}

static napi_value get_seals_js(napi_env env, napi_callback_info info) {
  ARGS(1);
  ARG_FD(0, fd);
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) return throw_errno(env, "fcntl(F_GET_SEALS)", errno);
  return make_int(env, seals);
}

static napi_value add_seals_js(napi_env env, napi_callback_info info) {
  ARGS(2);
  ARG_FD(0, fd);
  ARG_INT(1, seals, 0, 0xffff);
  if (fcntl(fd, F_ADD_SEALS, (int)seals) != 0) throw_errno(env, "fcntl(F_ADD_SEALS)", errno);
  return NULL;
}

static napi_value close_js(napi_env env, napi_callback_info info) {
  ARGS(1);
  ARG_FD(0, fd);
  // Linux releases the descriptor even when close reports EINTR: never retry.
  if (close(fd) != 0 && errno != EINTR) throw_errno(env, "close", errno);
  return NULL;
}

// pwrite(fd, bytes, offset): writes all bytes (loops on short writes)
static napi_value pwrite_js(napi_env env, napi_callback_info info) {
  ARGS(3);
  ARG_FD(0, fd);
  ARG_BYTES(1, data, len);
  ARG_INT(2, offset, 0, INT64_MAX);
  size_t done = 0;
  while (done < len) {
    ssize_t n;
    RETRY_EINTR(n = pwrite(fd, data + done, len - done, (off_t)(offset + (int64_t)done)));
    if (n < 0) return throw_errno(env, "pwrite", errno);
    done += (size_t)n;
  }
  return NULL;
}

// ---------------------------------------------------------------------------------------------
// Mappings exposed as external ArrayBuffers.
// One record per mapping; the ArrayBuffer's finalizer and an explicit unmap() both end up in
// release_mapping(), which munmaps exactly once. unmap() detaches the ArrayBuffer first, so
// every view over it becomes zero-length before the pages go away: a stale view reads nothing.

struct mapping {
  void* addr;
  size_t length;
  bool mapped;
  bool reported;       // counted in V8's external memory (see report_mapping_js)
  addon_state* owner;  // NULL once the environment's state is gone (teardown order varies)
  struct mapping* next;
};

static mapping* find_mapping(napi_env env, void* addr) {
  for (mapping* m = state_of(env)->mappings; m; m = m->next)
    if (m->addr == addr && m->mapped) return m;
  return NULL;
}

// The live mapping behind an ArrayBuffer argument, or NULL (not an ArrayBuffer, not ours, unmapped,
// or a buffer whose length no longer matches, i.e. detached).
static mapping* arg_mapping(napi_env env, napi_value value) {
  bool is_ab = false;
  if (napi_is_arraybuffer(env, value, &is_ab) != napi_ok || !is_ab) return NULL;
  void* data;
  size_t len;
  if (napi_get_arraybuffer_info(env, value, &data, &len) != napi_ok || !data) return NULL;
  mapping* m = find_mapping(env, data);
  return m && m->length == len ? m : NULL;
}

static void unlink_mapping(mapping* target) {
  if (!target->owner) return;
  for (mapping** p = &target->owner->mappings; *p; p = &(*p)->next) {
    if (*p == target) {
      *p = target->next;
      return;
    }
  }
}

static void do_munmap(napi_env env, mapping* m) {
  if (!m->mapped) return;
  munmap(m->addr, m->length);
  m->mapped = false;
  if (m->reported) {
    int64_t ignored;
    napi_adjust_external_memory(env, -(int64_t)m->length, &ignored);
    m->reported = false;
  }
}

// Set by finalize_mapping: when napi_create_external_arraybuffer fails, Node may or may not have
// run the finalizer already; this tells the failure path which.
static _Thread_local mapping* last_finalized;

static void finalize_mapping(napi_env env, void* data, void* hint) {
  (void)data;
  mapping* m = hint;
  last_finalized = m;
  do_munmap(env, m);
  unlink_mapping(m);
  free(m);
}


// mmap(fd, length, writable, offset = 0): ArrayBuffer over MAP_SHARED pages of [offset, offset + length).
// The offset lets a ring's consumer map its header read-write and its data read-only.
static napi_value mmap_js(napi_env env, napi_callback_info info) {
  ARGS(4);
  ARG_FD(0, fd);
  ARG_INT(1, length, 1, (int64_t)(SIZE_MAX >> 1));
  ARG_BOOL(2, writable);
  ARG_INT_OPT(3, offset, 0, (int64_t)(SIZE_MAX >> 1), 0);
  if (offset % sysconf(_SC_PAGESIZE) != 0) return throw_arg(env, "offset must be a multiple of the page size");
  if (length > MAX_MAPPING_BYTES)
    return throw_shm_error(env, "ERR_TOO_LARGE", "a mapping over 4 GiB cannot be exposed to JavaScript (V8's limit for an external ArrayBuffer)", 0, "mmap");
  int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
  void* addr = mmap(NULL, (size_t)length, prot, MAP_SHARED, fd, (off_t)offset);
  if (addr == MAP_FAILED) return throw_errno(env, "mmap", errno);
  mapping* m = calloc(1, sizeof *m);
  if (!m) {
    munmap(addr, (size_t)length);
    return throw_errno(env, "calloc", ENOMEM);
  }
  m->addr = addr;
  m->length = (size_t)length;
  m->mapped = true;
  napi_value ab;
  last_finalized = NULL;
  if (napi_create_external_arraybuffer(env, addr, (size_t)length, finalize_mapping, m, &ab) != napi_ok) {
    if (last_finalized != m) {
      munmap(addr, (size_t)length);
      free(m);
    }
    return throw_shm_error(env, "ERR_SYSCALL", "cannot expose the mapping as an external ArrayBuffer", 0, "napi_create_external_arraybuffer");
  }
  addon_state* st = state_of(env);
  m->owner = st;
  m->next = st->mappings;
  st->mappings = m;
  return ab;
}

// unmap(arrayBuffer): detach, then munmap. Returns false when it was not a live mapping of ours.
static napi_value unmap_js(napi_env env, napi_callback_info info) {
  ARGS(1);
  bool is_ab = false;
  napi_is_arraybuffer(env, argv[0], &is_ab);
  if (!is_ab) return throw_arg(env, "expected the ArrayBuffer returned by mmap()");
  mapping* m = arg_mapping(env, argv[0]);
  if (!m) return make_bool(env, false);
  if (napi_detach_arraybuffer(env, argv[0]) != napi_ok)
    return throw_shm_error(env, "ERR_SYSCALL", "cannot detach the mapped ArrayBuffer", 0, "napi_detach_arraybuffer");
  do_munmap(env, m);
  return make_bool(env, true);
}

// reportMapping(arrayBuffer): counts a live mapping in V8's external memory, so that a mapping
// nobody closes makes the garbage collector run (and its finalizer unmap it). Not done at mmap
// time: a large report forces a collection on the spot (~5 ms for 1 GiB), which a hand-off whose
// message is closed explicitly should never pay.
static napi_value report_mapping_js(napi_env env, napi_callback_info info) {
  ARGS(1);
  mapping* m = arg_mapping(env, argv[0]);
  if (m && !m->reported) {
    int64_t ignored;
    napi_adjust_external_memory(env, (int64_t)m->length, &ignored);
    m->reported = true;
  }
  return NULL;
}

// Faults in every page of [addr, addr + len) for writing: 0, or an errno.
static int populate_range(void* addr, size_t len) {
  if (madvise(addr, len, MADV_POPULATE_WRITE) == 0) return 0;
  if (errno != EINVAL) return errno;
  // Kernel without MADV_POPULATE_WRITE: touch one byte per page.
  volatile uint8_t* p = addr;
  long page = sysconf(_SC_PAGESIZE);
  for (size_t i = 0; i < len; i += (size_t)page) p[i] = p[i];
  return 0;
}

// populate(arrayBuffer): fault in every page of a writable mapping now (pre-touch for pools)
static napi_value populate_js(napi_env env, napi_callback_info info) {
  ARGS(1);
  mapping* m = arg_mapping(env, argv[0]);
  if (!m) return throw_arg(env, "expected a live mapping");
  int err = populate_range(m->addr, m->length);
  return err ? throw_errno(env, "madvise(MADV_POPULATE_WRITE)", err) : NULL;
}

// populateAsync(arrayBuffer): Promise<void>; populate() on the libuv threadpool, so that spare
// segments are allocated, zeroed and mapped off the event loop. The caller keeps the mapping
// until the promise settles; a reference keeps the ArrayBuffer from being collected meanwhile.
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref buffer;
  void* addr;
  size_t length;
  int err;
} populate_job;

static void populate_execute(napi_env env, void* data) {
  (void)env;
  populate_job* job = data;
  job->err = populate_range(job->addr, job->length);
}

static void populate_complete(napi_env env, napi_status status, void* data) {
  populate_job* job = data;
  if (status == napi_ok && job->err == 0) {
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    napi_resolve_deferred(env, job->deferred, undefined);
  } else {
    throw_errno(env, "madvise(MADV_POPULATE_WRITE)", job->err ? job->err : ECANCELED);
    napi_value exc;
    napi_get_and_clear_last_exception(env, &exc);
    napi_reject_deferred(env, job->deferred, exc);
  }
  napi_delete_reference(env, job->buffer);
  napi_delete_async_work(env, job->work);
  free(job);
}

static napi_value populate_async_js(napi_env env, napi_callback_info info) {
  ARGS(1);
  mapping* m = arg_mapping(env, argv[0]);
  if (!m) return throw_arg(env, "expected a live mapping");
  populate_job* job = calloc(1, sizeof *job);
  if (!job) return throw_errno(env, "calloc", ENOMEM);
  job->addr = m->addr;
  job->length = m->length;
  if (napi_create_reference(env, argv[0], 1, &job->buffer) != napi_ok) {
    free(job);
    return throw_arg(env, "cannot reference the mapping");
  }
  napi_value promise, name;
  napi_create_promise(env, &job->deferred, &promise);
  napi_create_string_utf8(env, "arrow-shm:populate", NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, populate_execute, populate_complete, job, &job->work) != napi_ok ||
      napi_queue_async_work(env, job->work) != napi_ok) {
    napi_delete_reference(env, job->buffer);
    free(job);
    return throw_arg(env, "cannot queue the populate job");
  }
  return promise;
}

// ---------------------------------------------------------------------------------------------
// UNIX domain sockets. Addresses: a path, or "@name" for the abstract namespace (arg_address).

// socket(seqpacket: boolean): non-blocking, close-on-exec AF_UNIX socket
static napi_value socket_js(napi_env env, napi_callback_info info) {
  ARGS(1);
  ARG_FLAG(0, seqpacket, true);
  int fd = socket(AF_UNIX, (seqpacket ? SOCK_SEQPACKET : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  return make_int(env, fd);
}

static napi_value bind_js(napi_env env, napi_callback_info info) {
  ARGS(2);
  ARG_FD(0, fd);
  ARG_ADDRESS(1, addr);
  if (bind(fd, (struct sockaddr*)&addr, addr_len) != 0) throw_errno(env, "bind", errno);
  return NULL;
}

static napi_value listen_js(napi_env env, napi_callback_info info) {
  ARGS(2);
  ARG_FD(0, fd);
  ARG_INT(1, backlog, 1, 65535);
  if (listen(fd, (int)backlog) != 0) throw_errno(env, "listen", errno);
  return NULL;
}

// accept(fd): new fd, or -1 when no connection is pending (EAGAIN)
static napi_value accept_js(napi_env env, napi_callback_info info) {
  ARGS(1);
  ARG_FD(0, fd);
  int c;
  RETRY_EINTR(c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (c >= 0) return make_int(env, c);
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED) return make_int(env, -1);
  return throw_errno(env, "accept4", errno);
}

// connect(fd, address): 0 when connected, -1 when in progress (EAGAIN/EINPROGRESS)
static napi_value connect_js(napi_env env, napi_callback_info info) {
  ARGS(2);
  ARG_FD(0, fd);
  ARG_ADDRESS(1, addr);
  int rc;
  RETRY_EINTR(rc = connect(fd, (struct sockaddr*)&addr, addr_len));
  if (rc == 0) return make_int(env, 0);
  if (errno == EAGAIN || errno == EINPROGRESS) return make_int(env, -1);
  return throw_errno(env, "connect", errno);
}

// socketError(fd): pending SO_ERROR (0 when none), for completing a non-blocking connect
static napi_value socket_error_js(napi_env env, napi_callback_info info) {
  ARGS(1);
  ARG_FD(0, fd);
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return throw_errno(env, "getsockopt(SO_ERROR)", errno);
  return make_int(env, err);
}

// peerCredentials(fd): { pid, uid, gid } from SO_PEERCRED
static napi_value peer_credentials_js(napi_env env, napi_callback_info info) {
  ARGS(1);
  ARG_FD(0, fd);
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return throw_errno(env, "getsockopt(SO_PEERCRED)", errno);
  napi_value out;
  napi_create_object(env, &out);
  set_int(env, out, "pid", cred.pid);
  set_int(env, out, "uid", cred.uid);
  set_int(env, out, "gid", cred.gid);
  return out;
}

static napi_value shutdown_js(napi_env env, napi_callback_info info) {
  ARGS(1);
  ARG_FD(0, fd);
  if (shutdown(fd, SHUT_RDWR) != 0 && errno != ENOTCONN) throw_errno(env, "shutdown", errno);
  return NULL;
}

// Control-message buffer for up to MAX_FDS_PER_MESSAGE descriptors, aligned for cmsghdr.
typedef union {
  char buf[CMSG_SPACE(sizeof(int) * MAX_FDS_PER_MESSAGE)];
  struct cmsghdr align;
} fd_control;

// sendmsg(fd, bytes, fds): bytes sent, or -1 when the socket buffer is full (EAGAIN)
static napi_value sendmsg_js(napi_env env, napi_callback_info info) {
  ARGS(3);
  ARG_FD(0, fd);
  ARG_BYTES(1, data, len);
  uint32_t nfds = 0;
  bool is_array = false;
  napi_is_array(env, argv[2], &is_array);
  if (!is_array || napi_get_array_length(env, argv[2], &nfds) != napi_ok || nfds > MAX_FDS_PER_MESSAGE)
    return throw_arg(env, "fds must be an array of at most 16 descriptors");
  int fds[MAX_FDS_PER_MESSAGE];
  for (uint32_t i = 0; i < nfds; i++) {
    napi_value e;
    napi_get_element(env, argv[2], i, &e);
    if (!arg_fd(env, e, &fds[i])) return NULL;
  }
  struct iovec iov = {.iov_base = data, .iov_len = len};
  fd_control control;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds > 0) {
    memset(&control, 0, sizeof control);
    msg.msg_control = control.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * nfds);
  }
  ssize_t n;
  RETRY_EINTR(n = sendmsg(fd, &msg, MSG_NOSIGNAL));
  if (n >= 0) return make_int(env, n);
  if (errno == EAGAIN || errno == EWOULDBLOCK) return make_int(env, -1);
  return throw_errno(env, "sendmsg", errno);
}

// recvmsg(fd, buffer): null when nothing is ready (EAGAIN), else
// { bytes, fds, truncated, controlTruncated }; bytes === 0 means the peer closed.
// Every fd received is returned (close-on-exec), even when the control data was truncated,
// so the caller can close them: nothing leaks.
static napi_value recvmsg_js(napi_env env, napi_callback_info info) {
  ARGS(2);
  ARG_FD(0, fd);
  ARG_BYTES(1, data, len);
  struct iovec iov = {.iov_base = data, .iov_len = len};
  fd_control control;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf};
  ssize_t n;
  RETRY_EINTR(n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC));
  if (n < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK) return throw_errno(env, "recvmsg", errno);
    napi_value nothing;
    napi_get_null(env, &nothing);
    return nothing;
  }
  napi_value out, fds;
  napi_create_object(env, &out);
  napi_create_array(env, &fds);
  uint32_t count = 0;
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t payload = c->cmsg_len - CMSG_LEN(0);
    int* received = (int*)CMSG_DATA(c);
    for (size_t i = 0; i < payload / sizeof(int); i++) {
      int got;
      memcpy(&got, received + i, sizeof got);
      napi_set_element(env, fds, count++, make_int(env, got));
    }
  }
  set_int(env, out, "bytes", n);
  napi_set_named_property(env, out, "fds", fds);
  napi_set_named_property(env, out, "truncated", make_bool(env, (msg.msg_flags & MSG_TRUNC) != 0));
  napi_set_named_property(env, out, "controlTruncated", make_bool(env, (msg.msg_flags & MSG_CTRUNC) != 0));
  return out;
}

// ---------------------------------------------------------------------------------------------
// eventfd, for cross-process wake-ups (Atomics.notify does not cross processes)

static napi_value eventfd_js(napi_env env, napi_callback_info info) {
  (void)info;
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return throw_errno(env, "eventfd", errno);
  return make_int(env, fd);
}

// eventfdWrite(fd): adds 1 to the counter, waking whoever polls it. A counter at its maximum
// (EAGAIN) already means "wake up", so that is not an error.
static napi_value eventfd_write_js(napi_env env, napi_callback_info info) {
  ARGS(1);
  ARG_FD(0, fd);
  uint64_t one = 1;
  ssize_t n;
  RETRY_EINTR(n = write(fd, &one, sizeof one));
  if (n < 0 && errno != EAGAIN) throw_errno(env, "write(eventfd)", errno);
  return NULL;
}

// eventfdRead(fd): reads and resets the counter; 0 when nothing was pending (EAGAIN).
static napi_value eventfd_read_js(napi_env env, napi_callback_info info) {
  ARGS(1);
  ARG_FD(0, fd);
  uint64_t value = 0;
  ssize_t n;
  RETRY_EINTR(n = read(fd, &value, sizeof value));
  if (n < 0) {
    if (errno == EAGAIN) return make_int(env, 0);
    return throw_errno(env, "read(eventfd)", errno);
  }
  if (n != sizeof value) return throw_shm_error(env, "ERR_INVALID_ARGUMENT", "not an eventfd: read returned a short count", 0, "read");
  return make_int(env, value > INT32_MAX ? INT32_MAX : (int64_t)value);
}

// ---------------------------------------------------------------------------------------------
// Poller: libuv readiness watch on an fd, so the event loop never blocks in a syscall.

typedef struct {
  uv_poll_t handle;
  napi_env env;
  napi_ref callback;
  napi_ref self;
  bool closing;
} poller;

static void poller_free(uv_handle_t* h) {
  poller* p = h->data;
  free(p);
}

static void poller_fire(uv_poll_t* h, int status, int events) {
  poller* p = h->data;
  if (p->closing) return;
  napi_env env = p->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value cb, global, argv[2], ignored;
  napi_get_reference_value(env, p->callback, &cb);
  napi_get_global(env, &global);
  argv[0] = make_int(env, status);
  argv[1] = make_int(env, events);
  // Errors thrown by the callback surface as uncaught exceptions, as for any libuv callback.
  if (napi_call_function(env, global, cb, 2, argv, &ignored) != napi_ok) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      napi_value exc;
      napi_get_and_clear_last_exception(env, &exc);
      napi_fatal_exception(env, exc);
    }
  }
  napi_close_handle_scope(env, scope);
}

static void poller_stop_internal(napi_env env, poller* p) {
  if (p->closing) return;
  p->closing = true;
  uv_poll_stop(&p->handle);
  napi_delete_reference(env, p->callback);
  p->callback = NULL;
  uv_close((uv_handle_t*)&p->handle, poller_free);
}

static void poller_finalize(napi_env env, void* data, void* hint) {
  (void)hint;
  poller* p = data;
  // The JS wrapper is gone; make sure libuv lets go of the handle too.
  if (!p->closing) poller_stop_internal(env, p);
}

// pollerCreate(fd, callback(status, events)): opaque handle
static napi_value poller_create_js(napi_env env, napi_callback_info info) {
  ARGS(2);
  ARG_FD(0, fd);
  ARG_FUNCTION(1, callback);
  uv_loop_t* loop;
  CALL(env, napi_get_uv_event_loop(env, &loop));
  poller* p = calloc(1, sizeof *p);
  if (!p) return throw_errno(env, "calloc", ENOMEM);
  int rc = uv_poll_init(loop, &p->handle, fd);
  if (rc != 0) {
    free(p);
    return throw_errno(env, "uv_poll_init", -rc);
  }
  p->handle.data = p;
  p->env = env;
  napi_create_reference(env, callback, 1, &p->callback);
  napi_value handle;
  napi_create_object(env, &handle);
  napi_wrap(env, handle, p, poller_finalize, NULL, NULL);
  return handle;
}

static poller* unwrap_poller(napi_env env, napi_value v) {
  poller* p = NULL;
  if (napi_unwrap(env, v, (void**)&p) != napi_ok || !p) {
    throw_arg(env, "expected a poller handle");
    return NULL;
  }
  if (p->closing) {
    throw_shm_error(env, "ERR_CLOSED", "the poller is closed", 0, NULL);
    return NULL;
  }
  return p;
}

// pollerStart(handle, readable, writable)
static napi_value poller_start_js(napi_env env, napi_callback_info info) {
  ARGS(3);
  ARG_POLLER(0, p);
  ARG_FLAG(1, readable, false);
  ARG_FLAG(2, writable, false);
  int events = (readable ? UV_READABLE | UV_DISCONNECT : 0) | (writable ? UV_WRITABLE : 0);
  int rc = events ? uv_poll_start(&p->handle, events, poller_fire) : uv_poll_stop(&p->handle);
  if (rc != 0) throw_errno(env, "uv_poll_start", -rc);
  return NULL;
}

// pollerRef(handle, keepsLoopAlive)
static napi_value poller_ref_js(napi_env env, napi_callback_info info) {
  ARGS(2);
  ARG_POLLER(0, p);
  ARG_FLAG(1, keepsLoopAlive, true);
  if (keepsLoopAlive) uv_ref((uv_handle_t*)&p->handle);
  else uv_unref((uv_handle_t*)&p->handle);
  return NULL;
}

static napi_value poller_close_js(napi_env env, napi_callback_info info) {
  ARGS(1);
  poller* p = NULL;
  // Detach from the JS object first: its finalizer must never see p after libuv frees it.
  if (napi_remove_wrap(env, argv[0], (void**)&p) != napi_ok || !p) return NULL;
  if (!p->closing) poller_stop_internal(env, p);
  return NULL;
}

// ---------------------------------------------------------------------------------------------
// Blocking wait on an eventfd, for readers that may block their thread (a worker, a CLI): the
// same sleep a C reader does, without the event loop's hops.

// eventfdWait(fd, timeoutMicros, hangupFd): blocks the calling thread until the eventfd is
// readable (its counter is then read and reset: 1), the socket hangupFd (-1: none) is hung up by
// its peer (2), or timeoutMicros (-1: no limit) passed or a signal interrupted the wait (0).
static napi_value eventfd_wait_js(napi_env env, napi_callback_info info) {
  ARGS(3);
  ARG_FD(0, fd);
  ARG_INT(1, timeoutMicros, -1, INT64_MAX / 1000);
  ARG_INT(2, hangupFd, -1, INT_MAX);
  struct pollfd fds[2] = {{.fd = fd, .events = POLLIN}, {.fd = (int)hangupFd, .events = POLLRDHUP}};
  struct timespec limit = {(time_t)(timeoutMicros / 1000000), (long)(timeoutMicros % 1000000) * 1000};
  int n = ppoll(fds, 2, timeoutMicros < 0 ? NULL : &limit, NULL);
  if (n < 0) return errno == EINTR ? make_int(env, 0) : throw_errno(env, "ppoll", errno);
  if (fds[0].revents & POLLNVAL) return throw_errno(env, "ppoll", EBADF);
  if (fds[0].revents & POLLIN) {
    uint64_t value;
    ssize_t got;
    RETRY_EINTR(got = read(fd, &value, sizeof value));
    if (got < 0 && errno != EAGAIN) return throw_errno(env, "read(eventfd)", errno);
    return make_int(env, 1);
  }
  if (fds[1].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return make_int(env, 2);
  return make_int(env, 0);
}

// ---------------------------------------------------------------------------------------------

static napi_value set_error_class_js(napi_env env, napi_callback_info info) {
  ARGS(1);
  addon_state* st = state_of(env);
  if (st->error_class) napi_delete_reference(env, st->error_class);
  napi_create_reference(env, argv[0], 1, &st->error_class);
  return NULL;
}

static void free_state(napi_env env, void* data, void* hint) {
  (void)hint;
  addon_state* st = data;
  // Mappings still alive are finalized later by their ArrayBuffers; they must not touch st then.
  for (mapping* m = st->mappings; m; m = m->next) m->owner = NULL;
  if (st->error_class) napi_delete_reference(env, st->error_class);
  free(st);
}

// constants: each named after its C macro, so the JS name and the value cannot drift apart.
#define CONSTANT(name) set_int(env, c, #name, name)

static napi_value constants(napi_env env) {
  napi_value c;
  napi_create_object(env, &c);
  CONSTANT(F_SEAL_SEAL);
  CONSTANT(F_SEAL_SHRINK);
  CONSTANT(F_SEAL_GROW);
  CONSTANT(F_SEAL_WRITE);
  CONSTANT(F_SEAL_FUTURE_WRITE);
  CONSTANT(S_IFMT);
  CONSTANT(S_IFREG);
  CONSTANT(UV_READABLE);
  CONSTANT(UV_WRITABLE);
  CONSTANT(UV_DISCONNECT);
  set_int(env, c, "PAGE_SIZE", sysconf(_SC_PAGESIZE));
  return c;
}

// The exports, one line each: JS name, C handler (the TypeScript view is src/native.ts).
#define METHOD(name, fn) {name, NULL, fn, NULL, NULL, NULL, napi_default, NULL}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  addon_state* st = calloc(1, sizeof *st);
  if (!st || napi_set_instance_data(env, st, free_state, NULL) != napi_ok) return NULL;
  napi_property_descriptor props[] = {
      METHOD("setErrorClass", set_error_class_js),
      METHOD("memfdCreate", memfd_create_js),
      METHOD("ftruncate", ftruncate_js),
      METHOD("fstat", fstat_js),
      METHOD("getSeals", get_seals_js),
      METHOD("addSeals", add_seals_js),
      METHOD("close", close_js),
      METHOD("pwrite", pwrite_js),
      METHOD("populateAsync", populate_async_js),
      METHOD("mmap", mmap_js),
      METHOD("unmap", unmap_js),
      METHOD("reportMapping", report_mapping_js),
      METHOD("populate", populate_js),
      METHOD("socket", socket_js),
      METHOD("bind", bind_js),
      METHOD("listen", listen_js),
      METHOD("accept", accept_js),
      METHOD("connect", connect_js),
      METHOD("socketError", socket_error_js),
      METHOD("peerCredentials", peer_credentials_js),
      METHOD("shutdown", shutdown_js),
      METHOD("sendmsg", sendmsg_js),
      METHOD("recvmsg", recvmsg_js),
      METHOD("eventfd", eventfd_js),
      METHOD("eventfdWrite", eventfd_write_js),
      METHOD("eventfdRead", eventfd_read_js),
      METHOD("eventfdWait", eventfd_wait_js),
      METHOD("pollerCreate", poller_create_js),
      METHOD("pollerStart", poller_start_js),
      METHOD("pollerRef", poller_ref_js),
      METHOD("pollerClose", poller_close_js),
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  napi_set_named_property(env, exports, "constants", constants(env));
  return exports;
}
