// The seed proof of concept's sender.cpp, rebuilt from its README for the seed-compatibility tests
// (docs/PROTOCOL.md §10): 100 random int32 values named "rand" in one RecordBatch, written as an
// IPC stream by Arrow's FileOutputStream into an unsealed memfd of 4096 * 10 bytes (through a dup,
// so Arrow may close its own copy), then one byte 'F' with the fd to the first client of a
// SOCK_STREAM listener. Deliberately none of arrow-shm's library: it must stay what the seed was.
//
// Usage: seed_sender SOCKET_PATH   (prints the values as one CSV line, then the listening line)
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <random>
#include <string>

#include <arrow/api.h>
#include <arrow/io/file.h>
#include <arrow/ipc/writer.h>

namespace {

constexpr size_t kMemSize = 4096 * 10;

[[noreturn]] void die(const std::string& what) {
  std::cerr << "seed_sender: " << what << ": " << std::strerror(errno) << "\n";
  std::exit(1);
}

void check(const arrow::Status& status) {
  if (!status.ok()) {
    std::cerr << "seed_sender: " << status.ToString() << "\n";
    std::exit(1);
  }
}

std::shared_ptr<arrow::RecordBatch> random_batch() {
  std::mt19937 rng(0);
  std::uniform_int_distribution<int32_t> value(0, 100);
  arrow::Int32Builder builder;
  for (int i = 0; i < 100; ++i) check(builder.Append(value(rng)));
  std::shared_ptr<arrow::Array> column;
  check(builder.Finish(&column));
  return arrow::RecordBatch::Make(arrow::schema({arrow::field("rand", arrow::int32())}), 100, {column});
}

void write_stream(int fd, const arrow::RecordBatch& batch) {
  int arrow_fd = dup(fd);
  if (arrow_fd < 0) die("dup");
  auto file = arrow::io::FileOutputStream::Open(arrow_fd);
  check(file.status());
  auto writer = arrow::ipc::MakeStreamWriter(*file, batch.schema());
  check(writer.status());
  check((*writer)->WriteRecordBatch(batch));
  check((*writer)->Close());
  check((*file)->Close());
}

void send_fd_to_first_client(const char* path, int fd) {
  int server = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (server < 0) die("socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (std::strlen(path) >= sizeof addr.sun_path) die("socket path too long");
  std::strcpy(addr.sun_path, path);
  unlink(path);
  if (bind(server, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) die("bind");
  if (listen(server, 1) < 0) die("listen");
  std::cerr << "arrow-shm: listening on " << path << std::endl;
  int client = accept4(server, nullptr, nullptr, SOCK_CLOEXEC);
  if (client < 0) die("accept");

  char byte = 'F';
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
  if (sendmsg(client, &msg, 0) != 1) die("sendmsg");
  close(client);
  close(server);
  unlink(path);
}

}  // namespace

int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : "/tmp/memfd_socket";
  int fd = memfd_create("arrow_zero_copy", MFD_CLOEXEC);
  if (fd < 0) die("memfd_create");
  if (ftruncate(fd, kMemSize) < 0) die("ftruncate");
  auto batch = random_batch();
  write_stream(fd, *batch);

  auto values = std::static_pointer_cast<arrow::Int32Array>(batch->column(0));
  for (int64_t i = 0; i < values->length(); ++i) std::cout << (i ? "," : "") << values->Value(i);
  std::cout << std::endl;

  send_fd_to_first_client(path, fd);
  close(fd);
  return 0;
}
