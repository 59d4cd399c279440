// The table store commands (docs/CLI.md, Table store): put, get, ls, rm, with the Node CLI's flags
// and output (src/cli/store.ts). This peer has no store server: `arrow-shm store --socket PATH`
// (Node) runs one.
#include <cmath>
#include <iostream>

#include "arrow_shm/store.hpp"
#include "cli.hpp"

namespace arrow_shm::cli {

namespace {

// 12s, 5m, 3h, 2d, rounded as the Node CLI (Math.round: halves up).
std::string age(int64_t created_ms) {
  using namespace std::chrono;
  const auto now = duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
  auto round = [](double x) { return static_cast<int64_t>(std::floor(x + 0.5)); };
  const int64_t s = std::max<int64_t>(0, round(static_cast<double>(now - created_ms) / 1000));
  if (s < 120) return std::to_string(s) + "s";
  if (s < 7200) return std::to_string(round(s / 60.0)) + "m";
  return s < 172800 ? std::to_string(round(s / 3600.0)) + "h" : std::to_string(round(s / 86400.0)) + "d";
}

}  // namespace

int cmd_store(const Options& o) {
  // Checked before connecting: a bad FILE or --out fails without touching the store.
  std::vector<uint8_t> data;
  if (o.command == "put") data = load(o.files[0]);
  Output output(o.command == "get" ? o.out : std::nullopt, 1);
  auto store = StoreClient::open(*o.store, timeout(o));
  if (o.command == "put") {
    PutResult put = store->put(*o.name, data, {o.meta, o.replace});
    std::cout << *o.name << "\tversion " << put.version << "\t" << put.bytes << " bytes\t" << put.rows << " rows\n";
  } else if (o.command == "get") {
    ReceivedTable m = store->get(*o.name, timeout(o));
    output.write(m.ipc->data(), static_cast<uint64_t>(m.ipc->size()), 0);
    if (o.print || !o.out) print_summary(m, 0);
  } else if (o.command == "ls") {
    for (const StoreEntry& e : store->list(o.prefix))
      std::cout << e.name << "\t" << e.bytes << "\t" << e.rows << "\t" << age(e.created_ms) << "\n";
  } else {
    store->remove(*o.name);
  }
  std::cout.flush();
  store->close();
  return 0;
}

}  // namespace arrow_shm::cli
