// slotshift-proxy: one Redis endpoint for a whole cluster. Routing lands with the proxy issue; until then the
// program says so instead of pretending to serve.
#include <CLI/CLI.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  CLI::App app{"slotshift-proxy: one Redis endpoint for a whole Redis Cluster"};
  std::string listen = "127.0.0.1:6380";
  std::string seeds;
  app.add_option("--listen", listen, "HOST:PORT to accept clients on");
  app.add_option("--seed", seeds, "HOST:PORT[,...] of cluster nodes to learn the topology from");
  CLI11_PARSE(app, argc, argv);
  std::fprintf(stderr, "slotshift-proxy: request routing is not part of this build yet\n");
  return 2;
}
