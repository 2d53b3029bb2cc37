// slotshift: the orchestrator CLI.
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <charconv>
#include <cstdlib>
#include <iostream>

#include "common/secret_file.h"
#include "common/tls_context.h"
#include "orchestrator/cluster_check.h"
#include "orchestrator/cluster_fix.h"
#include "orchestrator/commands.h"
#include "orchestrator/exit_status.h"
#include "orchestrator/move.h"

namespace {

// "50ms", "2s", "1500" (milliseconds).
std::chrono::milliseconds parse_duration(const std::string& text) {
  std::size_t used = 0;
  long long n = 0;
  try {
    n = std::stoll(text, &used);
  } catch (const std::exception&) {
    throw CLI::ValidationError("a duration is NUMBER[ms|s]: " + text);
  }
  const std::string unit = text.substr(used);
  if (n < 0) throw CLI::ValidationError("a duration cannot be negative: " + text);
  if (unit.empty() || unit == "ms") return std::chrono::milliseconds(n);
  if (unit == "s") return std::chrono::milliseconds(n * 1000);
  throw CLI::ValidationError("a duration is NUMBER[ms|s]: " + text);
}

// "8MB", "512KB", "1GB", "4096" (bytes).
std::size_t parse_size(const std::string& text) {
  std::size_t used = 0;
  unsigned long long n = 0;
  try {
    n = std::stoull(text, &used);
  } catch (const std::exception&) {
    throw CLI::ValidationError("a size is NUMBER[KB|MB|GB]: " + text);
  }
  std::string unit = text.substr(used);
  for (auto& c : unit)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (unit.empty() || unit == "B") return n;
  if (unit == "KB" || unit == "K") return n << 10;
  if (unit == "MB" || unit == "M") return n << 20;
  if (unit == "GB" || unit == "G") return n << 30;
  throw CLI::ValidationError("a size is NUMBER[KB|MB|GB]: " + text);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"slotshift: move, check and repair the slots of a Redis Cluster"};
  app.require_subcommand(1);

  slotshift::CommonOptions options;
  int timeout_ms = 2000;
  std::string password_file;
  // redis-cli's names for the same things.
  slotshift::TlsSettings tls;
  auto add_common = [&](CLI::App* sub) {
    sub->add_option("--cluster", options.cluster, "HOST:PORT of any node of the cluster")->required();
    sub->add_flag("--json", options.json, "machine-readable output");
    sub->add_option("--timeout-ms", timeout_ms, "deadline for each connection and each reply")
        ->check(CLI::Range(1, 600000));
    sub->add_option("--user", options.credentials.user, "ACL user for every node");
    auto* password =
        sub->add_option("--password", options.credentials.password,
                        "password for every node (or the environment variable SLOTSHIFT_PASSWORD; "
                        "the command line shows it to every user)");
    sub->add_option("--password-file", password_file, "file holding the password (its first line)")
        ->excludes(password);
    sub->add_flag("--tls", tls.enabled, "connect to every node over TLS (the nodes' tls-port)");
    sub->add_option("--cacert", tls.ca_cert_file,
                    "CA certificates that sign the nodes' certificates (default: the system's)");
    sub->add_option("--cacertdir", tls.ca_cert_dir, "the same, as an OpenSSL hashed directory");
    sub->add_option("--cert", tls.cert_file,
                    "client certificate to present (nodes ask for one unless tls-auth-clients is no)");
    sub->add_option("--key", tls.key_file, "the private key of --cert");
    sub->add_option("--sni", tls.server_name,
                    "server name to send and to check the nodes' certificates against (default: the chain is "
                    "checked, not the name, as the nodes check each other)");
  };
  auto* status =
      app.add_subcommand("status", "show masters, slots, replicas and epochs as every node reports them");
  add_common(status);
  auto* check = app.add_subcommand(
      "check",
      "ask every node, masters and replicas, what it holds and sees; exit 0 only if nothing is "
      "wrong (each finding says what it means, what clients see and what fix does)");
  add_common(check);

  slotshift::FixOptions fix_options;
  auto* fix = app.add_subcommand(
      "fix",
      "repair what check finds without losing an acknowledged write: close open slots keeping the newest "
      "copy of every key, end epoch collisions, delete orphan keys, undo unfinished moves, let masters a "
      "move left refusing writes take them again; prints its plan first and asks");
  add_common(fix);
  fix->add_flag("--yes", fix_options.yes, "apply the plan without asking");
  fix->add_flag("--dry-run", fix_options.dry_run, "print the plan and change nothing");
  fix->add_flag(
      "--assign-uncovered", fix_options.assign_uncovered,
      "give slots without an owner to a master (one holding their keys, else the one with the fewest "
      "slots)");
  fix->add_option("--proxy-token", fix_options.proxy_token,
                  "the proxies' admin token, for an unfinished move's proxies (or the environment variable "
                  "SLOTSHIFT_ADMIN_TOKEN)");

  slotshift::MoveOptions move;
  std::string max_pause = "50ms", pause_timeout = "2s", big_key = "8MB", spool_memory = "256MB",
              lease_ttl = "30s", hold_batches = "auto";
  const auto hold_batches_of = [](const std::string& text) {
    if (text == "auto") return 0;
    int n = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (ec != std::errc() || end != text.data() + text.size() || n < 1 || n > 64)
      throw std::invalid_argument("--hold-batches: auto, or a number of batches from 1 to 64");
    return n;
  };
  // The lease's ttl: how long a move that stalls (or whose machine vanished) keeps every other slotshift off
  // its nodes. At least 2 s: the lease is renewed every quarter of it, and half of it is left for the hosts'
  // clocks to differ.
  const auto lease_ttl_of = [](const std::string& text) {
    const auto ttl = parse_duration(text);
    if (ttl < std::chrono::seconds(2)) throw std::invalid_argument("--lease-ttl: at least 2s");
    return ttl;
  };
  auto* mv = app.add_subcommand(
      "move",
      "move slots to a master by replication, with one short fenced cutover per batch; exit 0 only "
      "when every node agrees on the new owner");
  add_common(mv);
  mv->add_option("--slots", move.slots, "slots to move: 0-1000,5000")->required();
  mv->add_option("--to", move.to, "the target master: HOST:PORT or node id")->required();
  mv->add_option("--max-pause", max_pause, "longest write pause of the source per batch (default 50ms)");
  mv->add_option("--hold-batches", hold_batches,
                 "how many batches one hold of the proxies spans, their handoff then one call for all: auto "
                 "(default: more than one only where a call to every proxy takes longer than a batch's "
                 "cutover, as with a large fleet) or a number");
  mv->add_option(
        "--fence", move.fence,
        "how writes are fenced at each cutover: source-pause (default: CLIENT PAUSE WRITE on the "
        "source, and the proxies hold) or proxy (only the proxies hold the moving slots; the source is "
        "never paused, so every client must go through a proxy)")
      ->check(CLI::IsMember({"source-pause", "proxy"}));
  mv->add_option("--engine", move.engine,
                 "replica (default): slotshift's replica link copies the keys and fences each cutover; "
                 "native: the servers' own CLUSTER MIGRATESLOTS (Valkey 9 and later) moves each batch, sized "
                 "so the source's delete of the moved keys stays within --max-pause")
      ->check(CLI::IsMember({"replica", "native"}));
  std::vector<std::string> proxies, proxy_dns;
  mv->add_option("--proxy", proxies,
                 "the admin endpoint (slotshift-proxy --admin) of a proxy to hold, route and release at each "
                 "cutover; repeatable");
  mv->add_option(
      "--proxy-dns", proxy_dns,
      "NAME:PORT: every address NAME resolves to is a proxy's admin endpoint (a Kubernetes headless "
      "Service); resolved again at every cutover; repeatable");
  mv->add_option("--proxy-token", move.proxy_token,
                 "the proxies' admin token (or the environment variable SLOTSHIFT_ADMIN_TOKEN)");
  mv->add_option("--journal", move.journal, "append every step to this file before taking it");
  mv->add_flag("--dry-run", move.dry_run, "show the plan (batches, keys, bytes, estimated time) and stop");
  mv->add_option("--big-key", big_key, "values above this size go as chunks of commands (default 8MB)");
  std::string snapshot = "diskless";
  mv->add_option(
        "--snapshot", snapshot,
        "diskless (default): the source streams its snapshot from a fork and writes nothing to disk; "
        "disk: it writes an RDB file first (its dump.rdb)")
      ->check(CLI::IsMember({"diskless", "disk"}));
  mv->add_option(
      "--spool-memory", spool_memory,
      "stream bytes kept in memory while the target is slower than the source, before they go to a "
      "file (default 256MB)");
  mv->add_option("--spool-dir", move.spool_dir, "directory for that file (default /tmp)");
  mv->add_option("--lease-ttl", lease_ttl,
                 "how long this move's lease on its nodes outlives its last renewal, should it stall or its "
                 "machine vanish; after that, resume or abort may take it over, and this move stops without "
                 "touching anything more (default 30s)");
  mv->add_option("--pause-timeout", pause_timeout,
                 "the CLIENT PAUSE a cutover asks for; it ends by itself after this if slotshift dies "
                 "(default 2s)");
  mv->add_flag("!--no-progress", move.progress,
               "no progress on stderr (a line that replaces itself on a terminal; elsewhere, as in a Job's "
               "log, a line with the time at each phase and every --progress-interval)");
  std::string progress_interval = "10s", metrics;
  mv->add_option("--progress-interval", progress_interval,
                 "when stderr is not a terminal: the most often a progress line is written within a phase "
                 "(default 10s)");
  mv->add_option("--metrics", metrics,
                 "HOST:PORT: serve the running move's figures (keys and bytes copied, lag, batch, pauses) at "
                 "/metrics, in Prometheus's text format, until it ends");

  // abort and resume: the move of a journal. resume takes move's options for the rest of the move.
  slotshift::MoveOptions recover;
  auto* abort = app.add_subcommand(
      "abort",
      "after a crash: undo what a move did not claim (copied keys, IMPORTING, settings it changed, the "
      "proxies' holds, the sources' pause); claimed batches stay moved, as the nodes say");
  auto* resume = app.add_subcommand(
      "resume",
      "after a crash: abort what was not claimed, then move the rest of the plan to the same target");
  for (auto* sub : {abort, resume}) {
    add_common(sub);
    sub->add_option("--journal", recover.journal,
                    "the move's journal (default: the newest unfinished one in $SLOTSHIFT_STATE_DIR, "
                    "/var/lib/slotshift for root, ~/.local/state/slotshift for others)");
    sub->add_option("--proxy-token", recover.proxy_token,
                    "the proxies' admin token (or the environment variable SLOTSHIFT_ADMIN_TOKEN)");
  }
  resume->add_option("--max-pause", max_pause, "as for move");
  resume->add_option("--pause-timeout", pause_timeout, "as for move");
  resume->add_option("--hold-batches", hold_batches, "as for move");
  for (auto* sub : {abort, resume})
    sub->add_option("--lease-ttl", lease_ttl, "as for move");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help prints and exits 0; every other parse error is the command line's: exit status 2, whatever
    // CLI11's own code for it.
    return app.exit(e) == 0 ? slotshift::kExitDone : slotshift::kExitUsage;
  }
  options.timeout = std::chrono::milliseconds(timeout_ms);
  if (!password_file.empty()) {
    if (const auto why = slotshift::read_secret_file(password_file, options.credentials.password);
        !why.empty()) {
      std::cerr << "slotshift: --password-file: " << why << "\n";
      return slotshift::kExitUsage;
    }
  }
  if (options.credentials.password.empty())
    if (const char* p = std::getenv("SLOTSHIFT_PASSWORD")) options.credentials.password = p;
  // As redis-cli: --tls turns TLS on, and the files only say how. A file given without it is a mistake the
  // user should hear about, not a plain connection.
  for (const auto& [flag, value] :
       {std::pair{"--cacert", &tls.ca_cert_file}, std::pair{"--cacertdir", &tls.ca_cert_dir},
        std::pair{"--cert", &tls.cert_file}, std::pair{"--key", &tls.key_file},
        std::pair{"--sni", &tls.server_name}})
    if (!tls.enabled && !value->empty()) {
      std::cerr << "slotshift: " << flag << " needs --tls (without it every connection is plain TCP)\n";
      return slotshift::kExitUsage;
    }
  if (tls.enabled) {
    std::string error;
    // One context for the whole run: the files are read once, here, and a bad one stops slotshift before
    // it connects to anything.
    options.credentials.tls = slotshift::TlsContext::client(tls, error);
    if (!options.credentials.tls) {
      std::cerr << "slotshift: --tls: " << error << "\n";
      return slotshift::kExitUsage;
    }
  }
  if (status->parsed()) return slotshift::run_status(options, std::cout, std::cerr);
  if (check->parsed()) return slotshift::run_check(options, std::cout, std::cerr);
  if (fix->parsed()) {
    fix_options.common = options;
    fix_options.interactive = isatty(STDIN_FILENO) != 0;
    if (fix_options.proxy_token.empty())
      if (const char* t = std::getenv("SLOTSHIFT_ADMIN_TOKEN")) fix_options.proxy_token = t;
    return slotshift::run_fix(fix_options, std::cin, std::cout, std::cerr);
  }
  if (abort->parsed() || resume->parsed()) {
    try {
      recover.max_pause = parse_duration(max_pause);
      recover.pause_timeout = parse_duration(pause_timeout);
      recover.lease_ttl = lease_ttl_of(lease_ttl);
      recover.hold_batches = hold_batches_of(hold_batches);
    } catch (const std::exception& e) {
      std::cerr << (abort->parsed() ? "slotshift abort: " : "slotshift resume: ") << e.what() << "\n";
      return slotshift::kExitUsage;
    }
    if (recover.proxy_token.empty())
      if (const char* t = std::getenv("SLOTSHIFT_ADMIN_TOKEN")) recover.proxy_token = t;
    recover.common = options;
    recover.progress = false;
    return abort->parsed() ? slotshift::run_abort(recover, std::cout, std::cerr)
                           : slotshift::run_resume(recover, std::cout, std::cerr);
  }
  if (mv->parsed()) {
    try {
      move.max_pause = parse_duration(max_pause);
      move.pause_timeout = parse_duration(pause_timeout);
      move.lease_ttl = lease_ttl_of(lease_ttl);
      move.hold_batches = hold_batches_of(hold_batches);
      move.big_key = parse_size(big_key);
      move.spool_memory = parse_size(spool_memory);
      move.diskless = snapshot == "diskless";
      move.progress_interval = parse_duration(progress_interval);
      if (!metrics.empty()) {
        std::string error;
        move.metrics = slotshift::parse_host_port(metrics, error);
        if (!move.metrics) throw std::invalid_argument("--metrics: " + error);
      }
      for (auto* list : {&proxies, &proxy_dns})
        for (const auto& text : *list) {
          std::string error;
          const auto hp = slotshift::parse_host_port(text, error);
          if (!hp) throw std::invalid_argument((list == &proxies ? "--proxy: " : "--proxy-dns: ") + error);
          (list == &proxies ? move.proxies : move.proxy_dns).push_back(*hp);
        }
      if (move.proxy_token.empty())
        if (const char* t = std::getenv("SLOTSHIFT_ADMIN_TOKEN")) move.proxy_token = t;
    } catch (const std::exception& e) {
      std::cerr << "slotshift move: " << e.what() << "\n";
      return slotshift::kExitUsage;
    }
    move.common = options;
    return slotshift::run_move(move, std::cout, std::cerr);
  }
  return slotshift::kExitUsage;
}
