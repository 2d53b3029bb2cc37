// slotshift: the orchestrator CLI.
#include <CLI/CLI.hpp>

#include <iostream>

#include "orchestrator/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"slotshift: move, check and repair the slots of a Redis Cluster"};
  app.require_subcommand(1);

  slotshift::CommonOptions options;
  int timeout_ms = 2000;
  auto add_common = [&](CLI::App* sub) {
    sub->add_option("--cluster", options.cluster, "HOST:PORT of any node of the cluster")->required();
    sub->add_flag("--json", options.json, "machine-readable output");
    sub->add_option("--timeout-ms", timeout_ms, "deadline for each connection and each reply")
        ->check(CLI::Range(1, 600000));
  };
  auto* status =
      app.add_subcommand("status", "show masters, slots, replicas and epochs as every node reports them");
  add_common(status);
  auto* check =
      app.add_subcommand("check", "compare every node's view; exit 0 only if the cluster is consistent");
  add_common(check);

  CLI11_PARSE(app, argc, argv);
  options.timeout = std::chrono::milliseconds(timeout_ms);
  if (status->parsed()) return slotshift::run_status(options, std::cout, std::cerr);
  if (check->parsed()) return slotshift::run_check(options, std::cout, std::cerr);
  return 2;
}
