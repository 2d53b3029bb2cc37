// slotshift-proxy: one Redis endpoint for a whole Redis Cluster.
#include <CLI/CLI.hpp>

#include <malloc.h>
#include <pthread.h>
#include <sys/resource.h>
#include <unistd.h>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "common/secret_file.h"
#include "proxy/admin.h"
#include "proxy/config.h"
#include "proxy/log.h"
#include "proxy/upgrade.h"
#include "proxy/worker.h"

using namespace slotshift;

int main(int argc, char** argv) {
  CLI::App app{"slotshift-proxy: plain Redis clients use a whole Redis Cluster as one Redis"};
  std::string listen, seeds, config_file;
  long request_timeout_ms = 0, connect_timeout_ms = 0, refresh_ms = 0, idle_s = 0, drain_ms = 0;
  std::size_t max_clients = 0, max_bulk = 0, max_output = 0, max_pipeline = 0, max_held = 0, max_blocking = 0,
              max_inflight = 0;
  int threads = 0;
  bool allow_admin = false;
  std::string admin, admin_token, admin_token_file;
  std::string masteruser, masterauth, masterauth_file, requirepass, requirepass_file, client_auth;
  auto* o_listen =
      app.add_option("--listen", listen, "HOST:PORT to accept clients on (default 127.0.0.1:6380)");
  auto* o_seed =
      app.add_option("--seed", seeds, "HOST:PORT[,...] of cluster nodes to learn the topology from");
  app.add_option("--config", config_file,
                 "JSON file of settings (keys are these flags' names without dashes)");
  auto* o_threads =
      app.add_option("--threads", threads, "worker threads, each with its own loop (default: cores)");
  auto* o_rt = app.add_option("--request-timeout-ms", request_timeout_ms, "deadline of every request (5000)");
  auto* o_ct =
      app.add_option("--connect-timeout-ms", connect_timeout_ms, "deadline to connect to a node (1000)");
  auto* o_refresh = app.add_option("--refresh-interval-ms", refresh_ms, "slot map reload period (10000)");
  auto* o_clients =
      app.add_option("--max-clients", max_clients, "client connections accepted at once (10000)");
  auto* o_bulk = app.add_option("--max-bulk-bytes", max_bulk, "largest argument accepted (536870912)");
  auto* o_output =
      app.add_option("--max-client-output-bytes", max_output,
                     "unread replies kept for a slow client before it is disconnected (67108864)");
  auto* o_pipeline = app.add_option("--max-pipeline", max_pipeline,
                                    "requests in flight per client before reading pauses (100000)");
  auto* o_held = app.add_option("--max-held-bytes", max_held,
                                "requests kept back for slot holds, per process, before clients with held "
                                "commands stop being read (67108864)");
  auto* o_blocking =
      app.add_option("--max-blocking-connections", max_blocking,
                     "blocking commands at once, each on a connection of its own, per process (1024)");
  auto* o_inflight = app.add_option("--max-inflight-bytes", max_inflight,
                                    "bytes of requests at the cluster, unanswered, per process, before no "
                                    "client is read (268435456)");
  auto* o_idle = app.add_option("--idle-timeout-s", idle_s, "close clients idle this long; 0 never (0)");
  auto* o_drain = app.add_option("--drain-timeout-ms", drain_ms,
                                 "on SIGTERM, how long clients' commands in flight may take before the "
                                 "proxy exits; each client is closed once answered (5000; 0: exit at once)");
  auto* o_admin =
      app.add_flag("--allow-admin-commands", allow_admin,
                   "pass SHUTDOWN, CONFIG SET, DEBUG, CLUSTER ... through instead of refusing them");
  auto* o_admin_ep =
      app.add_option("--admin", admin, "HOST:PORT of the HTTP admin endpoint (off by default)");
  auto* o_token = app.add_option("--admin-token", admin_token,
                                 "bearer token the admin endpoint requires (or env SLOTSHIFT_ADMIN_TOKEN); "
                                 "required unless --admin is a loopback address");
  auto* o_token_file = app.add_option("--admin-token-file", admin_token_file,
                                      "file holding the admin token, so that it is not on the command line")
                           ->excludes(o_token);
  auto* o_masteruser = app.add_option(
      "--masteruser", masteruser, "ACL user the proxy logs in to every node as (default: the default user)");
  auto* o_masterauth = app.add_option("--masterauth", masterauth,
                                      "password the proxy logs in to every node with (or env "
                                      "SLOTSHIFT_MASTERAUTH; the command line shows it to every user)");
  auto* o_masterauth_file =
      app.add_option("--masterauth-file", masterauth_file, "file holding --masterauth's password")
          ->excludes(o_masterauth);
  auto* o_requirepass = app.add_option("--requirepass", requirepass,
                                       "password every client must AUTH with (or env SLOTSHIFT_REQUIREPASS)");
  auto* o_requirepass_file =
      app.add_option("--requirepass-file", requirepass_file, "file holding --requirepass's password")
          ->excludes(o_requirepass);
  auto* o_client_auth =
      app.add_option("--client-auth", client_auth,
                     "none | password (--requirepass) | acl: clients log in as the cluster's own ACL users, "
                     "and their commands run as those users")
          ->check(CLI::IsMember({"none", "password", "acl"}));
  std::string read_from;
  auto* o_read_from =
      app.add_option("--read-from", read_from,
                     "where read-only commands with keys run: master (default); replica: on a replica of "
                     "the slot's master only (waiting up to the request timeout when none is usable); "
                     "prefer-replica: on a replica when one is usable, else the master. Replica reads may "
                     "lag the master by the replication delay and need not see the client's own writes; a "
                     "client that sends READWRITE reads on masters")
          ->check(CLI::IsMember({"master", "replica", "prefer-replica"}));
  // TLS, named after Redis's tls-* settings; the backend- ones for the connections to the cluster.
  std::string tls_cert, tls_key, tls_ca, tls_ca_dir, tls_auth;
  std::string btls_cert, btls_key, btls_ca, btls_ca_dir, btls_name;
  bool btls = false;
  auto* o_tls_cert = app.add_option("--tls-cert-file", tls_cert,
                                    "certificate for clients: the listening port speaks TLS only");
  auto* o_tls_key = app.add_option("--tls-key-file", tls_key, "the private key of --tls-cert-file");
  auto* o_tls_ca =
      app.add_option("--tls-ca-cert-file", tls_ca, "CAs that sign clients' certificates (PEM file)");
  auto* o_tls_ca_dir = app.add_option("--tls-ca-cert-dir", tls_ca_dir, "the same, as an OpenSSL directory");
  auto* o_tls_auth = app.add_option("--tls-auth-clients", tls_auth,
                                    "yes: clients need a certificate (default), optional, or no")
                         ->check(CLI::IsMember({"yes", "no", "optional"}));
  auto* o_btls = app.add_flag("--backend-tls", btls, "connect to the cluster's nodes over TLS");
  auto* o_btls_cert = app.add_option("--backend-tls-cert-file", btls_cert,
                                     "the proxy's client certificate, for nodes that require one");
  auto* o_btls_key =
      app.add_option("--backend-tls-key-file", btls_key, "the private key of that certificate");
  auto* o_btls_ca = app.add_option("--backend-tls-ca-cert-file", btls_ca,
                                   "CAs that sign the nodes' certificates (default: the system's)");
  auto* o_btls_ca_dir =
      app.add_option("--backend-tls-ca-cert-dir", btls_ca_dir, "the same, as an OpenSSL directory");
  auto* o_btls_name = app.add_option("--backend-tls-server-name", btls_name,
                                     "name sent as SNI and required in the nodes' certificates");
  std::string upgrade_socket;
  auto* o_upgrade = app.add_option("--upgrade-socket", upgrade_socket,
                                   "unix socket PATH for binary upgrades: a new slotshift-proxy started with "
                                   "the same PATH takes over the listening sockets, and this one drains");
  std::string log_format;
  auto* o_log_format =
      app.add_option("--log-format", log_format, "text (default) or json: one object per line")
          ->check(CLI::IsMember({"text", "json"}));
  CLI11_PARSE(app, argc, argv);
  // The command line's log format at once, for the errors of what follows (the file's is known once read).
  proxy::LogFormat format_flag = proxy::LogFormat::kText;
  if (o_log_format->count()) {
    proxy::parse_log_format(log_format.c_str(), format_flag);
    proxy::set_log_format(format_flag);
  }
  // The settings: the config file's, then the command line's over them, then the environment's for what
  // neither gave. Built again from the same sources on SIGHUP (the file and the secret files re-read).
  auto build = [&](proxy::Config& config, std::string& error) -> bool {
    config.threads = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 256u));

    if (!config_file.empty()) {
      error = proxy::load_config_file(config_file, config);
      if (!error.empty()) return false;
    }
    // HOST:PORT (or a list of them) from the command line; false, after saying why, for anything else.
    auto endpoints = [&error](const char* flag, const std::string& text, std::vector<HostPort>& into,
                              bool one) {
      auto list = parse_host_port_list(text, error);
      if (list && one && list->size() != 1) error = "takes one HOST:PORT, got '" + text + "'";
      if (!list || (one && list->size() != 1)) {
        error = std::string(flag) + ": " + error;
        return false;
      }
      into = std::move(*list);
      return true;
    };
    std::vector<HostPort> one;
    if (o_listen->count()) {
      if (!endpoints("--listen", listen, one, true)) return false;
      config.listen = one.front();
    }
    if (o_seed->count() && !endpoints("--seed", seeds, config.seeds, false)) return false;
    if (o_threads->count()) config.threads = threads;
    if (o_rt->count()) config.request_timeout = std::chrono::milliseconds(request_timeout_ms);
    if (o_ct->count()) config.connect_timeout = std::chrono::milliseconds(connect_timeout_ms);
    if (o_refresh->count()) config.refresh_interval = std::chrono::milliseconds(refresh_ms);
    if (o_clients->count()) config.max_clients = max_clients;
    if (o_bulk->count()) config.max_bulk_bytes = max_bulk;
    if (o_output->count()) config.max_client_output = max_output;
    if (o_pipeline->count()) config.max_pipeline = max_pipeline;
    if (o_held->count()) config.max_held_bytes = max_held;
    if (o_blocking->count()) config.max_blocking_connections = max_blocking;
    if (o_inflight->count()) config.max_inflight_bytes = max_inflight;
    if (o_idle->count()) config.idle_timeout = std::chrono::seconds(idle_s);
    if (o_log_format->count()) config.log_format = format_flag;
    if (o_upgrade->count()) config.upgrade_socket = upgrade_socket;
    if (o_drain->count()) config.drain_timeout = std::chrono::milliseconds(drain_ms);
    if (o_admin->count()) config.allow_admin_commands = allow_admin;
    if (o_admin_ep->count()) {
      if (!endpoints("--admin", admin, one, true)) return false;
      config.admin = one.front();
    }
    // The token: from the command line, else the environment, else the config file.
    if (o_token->count()) {
      config.admin_token = admin_token;
    } else if (o_token_file->count()) {
      error = read_secret_file(admin_token_file, config.admin_token);
      if (!error.empty()) {
        error = "--admin-token-file: " + error;
        return false;
      }
    } else if (const char* env = std::getenv("SLOTSHIFT_ADMIN_TOKEN"); env && *env) {
      config.admin_token = env;
    }
    // The passwords the same way: the command line (a flag or a file), else the environment, else the file.
    auto secret = [&](CLI::Option* flag, const std::string& value, CLI::Option* file_flag,
                      const std::string& file, const char* env_name, std::string& into) {
      if (flag->count()) {
        into = value;
      } else if (file_flag->count()) {
        error = read_secret_file(file, into);
        if (!error.empty()) {
          error = file_flag->get_name() + ": " + error;
          return false;
        }
      } else if (const char* env = std::getenv(env_name); env && *env) {
        into = env;
      }
      return true;
    };
    if (!secret(o_masterauth, masterauth, o_masterauth_file, masterauth_file, "SLOTSHIFT_MASTERAUTH",
                config.masterauth) ||
        !secret(o_requirepass, requirepass, o_requirepass_file, requirepass_file, "SLOTSHIFT_REQUIREPASS",
                config.requirepass))
      return false;
    if (o_masteruser->count()) config.masteruser = masteruser;
    if (o_client_auth->count()) proxy::parse_client_auth(client_auth, config.client_auth);
    if (o_read_from->count()) proxy::parse_read_from(read_from, config.read_from);
    // A password for clients means clients log in with it, unless another mode was asked for (and refused
    // below).
    if (!config.requirepass.empty() && config.client_auth == proxy::Config::ClientAuth::kNone)
      config.client_auth = proxy::Config::ClientAuth::kPassword;
    if (error = proxy::client_auth_error(config); !error.empty()) {
      return false;
    }
    auto set = [](CLI::Option* flag, const std::string& value, std::string& into) {
      if (flag->count()) into = value;
    };
    set(o_tls_cert, tls_cert, config.tls.cert_file);
    set(o_tls_key, tls_key, config.tls.key_file);
    set(o_tls_ca, tls_ca, config.tls.ca_cert_file);
    set(o_tls_ca_dir, tls_ca_dir, config.tls.ca_cert_dir);
    if (o_tls_auth->count()) parse_tls_auth_clients(tls_auth, config.tls.auth_clients);
    if (o_btls->count()) config.backend_tls.enabled = btls;
    set(o_btls_cert, btls_cert, config.backend_tls.cert_file);
    set(o_btls_key, btls_key, config.backend_tls.key_file);
    set(o_btls_ca, btls_ca, config.backend_tls.ca_cert_file);
    set(o_btls_ca_dir, btls_ca_dir, config.backend_tls.ca_cert_dir);
    set(o_btls_name, btls_name, config.backend_tls.server_name);
    config.tls.enabled = !config.tls.cert_file.empty();
    if (error = proxy::tls_settings_error(config); !error.empty()) {
      return false;
    }
    if (error = proxy::admin_endpoint_error(config); !error.empty()) {
      return false;
    }
    if (error = proxy::range_error(config); !error.empty()) {
      return false;
    }
    if (config.seeds.empty()) {
      error = "--seed is required (HOST:PORT of at least one cluster node)";
      return false;
    }
    return true;
  };
  proxy::Config config;
  const bool built = [&] {
    std::string error;
    if (build(config, error)) return true;
    // The command line's format, else the file's if it was read before the error.
    proxy::set_log_format(o_log_format->count() ? format_flag : config.log_format);
    proxy::log_line(proxy::LogLevel::kError, "%s", error.c_str());
    return false;
  }();
  if (!built) return 2;
  proxy::set_log_format(config.log_format);
  std::string error;

  // Large values pass through the proxy in buffers of their size (a 100 MB reply, a slow reader's backlog).
  // glibc's default threshold for giving such a buffer its own mapping rises to the largest size freed so
  // far, after which buffers of up to 32 MB come from the heap, whose freed middle is kept: a burst of 1 MB
  // replies left the proxy 33 MB larger, for good. With a fixed threshold every buffer from 256 KB up is
  // unmapped when freed (and a growing one is remapped, not copied; see ReadBuffer).
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);

  // Every client and backend connection is a descriptor: raise the soft limit as far as the hard one allows.
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
    const rlim_t want = static_cast<rlim_t>(config.max_clients) + 1024;
    if (nofile.rlim_cur < want) {
      nofile.rlim_cur = std::min(want, nofile.rlim_max);
      setrlimit(RLIMIT_NOFILE, &nofile);
      if (nofile.rlim_cur < want) {
        proxy::log_line(proxy::LogLevel::kWarning,
                        "warning: open files limited to %lu, below max-clients + 1024",
                        static_cast<unsigned long>(nofile.rlim_cur));
      }
    }
  }

  // Signals are taken by this thread alone (sigwait below); the workers never see them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  // A predecessor at the upgrade socket hands over its listening sockets: not one connection waiting in their
  // backlog is refused. It serves until this process says it does (confirm_take_over, below).
  proxy::TakeOver taken;
  if (!config.upgrade_socket.empty()) {
    taken = proxy::take_over(config.upgrade_socket, config.listen.str(), error);
    if (!error.empty()) {
      proxy::log_line(proxy::LogLevel::kError, "%s", error.c_str());
      return 1;
    }
  }
  proxy::Proxy proxy(config);
  error = proxy.start(taken.sockets);
  if (!error.empty()) {
    proxy::log_line(proxy::LogLevel::kError, "%s", error.c_str());
    return 1;
  }
  std::unique_ptr<proxy::AdminServer> admin_server;
  if (config.admin.port != 0) {
    admin_server = std::make_unique<proxy::AdminServer>(proxy, config.admin, config.admin_token);
    error = admin_server->start();
    if (!error.empty()) {
      proxy::log_line(proxy::LogLevel::kError, "%s", error.c_str());
      proxy.stop();
      proxy.wait();
      return 1;
    }
  }
  const std::string admin_note = admin_server ? ", admin on " + config.admin.str() : "";
  const std::string read_note = config.read_from == proxy::Config::ReadFrom::kMaster
                                    ? ""
                                    : ", reads from " + std::string(proxy::read_from_name(config.read_from));
  proxy::log_line(proxy::LogLevel::kInfo, "listening on %s with %d thread(s), seeds %s%s%s",
                  config.listen.str().c_str(), config.threads, config.seeds.front().str().c_str(),
                  admin_note.c_str(), read_note.c_str());
  if (taken.found) {
    const std::string outcome = proxy::confirm_take_over(taken);
    proxy::log_line(proxy::LogLevel::kInfo, "upgrade: %s", outcome.c_str());
  }
  std::unique_ptr<proxy::UpgradeListener> upgrade;
  if (!config.upgrade_socket.empty()) {
    upgrade = proxy::UpgradeListener::start(
        config.upgrade_socket, proxy.listen_fds(), config.listen.str(),
        [](pid_t successor) {
          proxy::log_line(proxy::LogLevel::kInfo,
                          "upgrade: pid %d accepts on the listening sockets now; this process drains",
                          static_cast<int>(successor));
          // The drain is SIGTERM's: the main thread takes it from sigwait.
          ::kill(::getpid(), SIGTERM);
        },
        error);
    // Serving matters more than a later upgrade: this one goes on, and says why none can come.
    if (!upgrade)
      proxy::log_line(proxy::LogLevel::kWarning, "%s; no binary upgrade can take over", error.c_str());
  }
  int sig = 0;
  // SIGHUP builds the settings again from their sources (the config file, the secret files, the command line
  // and the environment) and applies what may change while clients are connected; the TLS files are read
  // again (new connections use them, open ones keep theirs). Settings that do not build keep the old ones.
  auto reload = [&] {
    proxy::Config wanted;
    if (std::string why; !build(wanted, why)) {
      proxy::log_line(proxy::LogLevel::kWarning, "SIGHUP: settings not reloaded, the old ones stay: %s",
                      why.c_str());
      return;
    }
    const proxy::ReloadOutcome outcome = proxy.reload(wanted);
    if (admin_server) admin_server->set_token(proxy.config().admin_token);
    proxy::log_line(outcome.applied ? proxy::LogLevel::kInfo : proxy::LogLevel::kWarning, "SIGHUP: %s",
                    outcome.line.c_str());
  };
  while (sigwait(&signals, &sig) == 0 && sig == SIGHUP)
    reload();
  // The drain's deadline as a reload may have set it. No successor may take the listening sockets from now
  // on: they close.
  config = proxy.config();
  if (upgrade) upgrade->close_sockets();
  if (config.drain_timeout.count() > 0) {
    proxy::log_line(proxy::LogLevel::kInfo,
                    "signal %d: draining for up to %lld ms (no new clients; each client is "
                    "closed once its commands are answered); a second SIGTERM or SIGINT stops at once",
                    sig, static_cast<long long>(config.drain_timeout.count()));
    proxy.drain(config.drain_timeout);
    // The workers end by themselves, by the deadline at the latest; the admin endpoint answers meanwhile
    // (/readyz says "draining", and a move's hold and release still reach the clients that are left).
    // The workers stop at the deadline themselves; this one is the process's, should a worker not.
    const auto hard_stop = std::chrono::steady_clock::now() + config.drain_timeout + std::chrono::seconds(2);
    const timespec poll{0, 20 * 1000 * 1000};
    while (!proxy.finished()) {
      if (std::chrono::steady_clock::now() >= hard_stop) {
        proxy::log_line(proxy::LogLevel::kWarning, "the drain did not end by its deadline, stopping now");
        break;
      }
      const int got = sigtimedwait(&signals, nullptr, &poll);
      if (got == SIGHUP) reload();
      if (got == SIGTERM || got == SIGINT) {
        proxy::log_line(proxy::LogLevel::kInfo, "signal %d while draining, stopping now", got);
        break;
      }
    }
  } else {
    proxy::log_line(proxy::LogLevel::kInfo, "signal %d, stopping", sig);
  }
  if (admin_server) admin_server->stop();
  proxy.stop();
  proxy.wait();
  if (proxy.draining()) {
    const proxy::DrainReport d = proxy.drain_report();
    proxy::log_line(proxy::LogLevel::kInfo,
                    "drained in %llu ms: %zu client(s) closed once answered, %zu closed unfinished (a "
                    "command unanswered, or a transaction or WATCH open)",
                    static_cast<unsigned long long>(d.elapsed_ms), d.closed_answered, d.closed_unanswered);
  }
  return 0;
}
