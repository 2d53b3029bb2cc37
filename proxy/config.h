// slotshift-proxy's configuration: command-line flags, optionally a JSON file (--config) whose keys are the
// long flag names without dashes ("request-timeout-ms": 5000). Flags given on the command line win over the
// file.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/host_port.h"
#include "common/tls_context.h"
#include "proxy/log.h"

namespace slotshift::proxy {

struct Config {
  HostPort listen{"127.0.0.1", 6380};
  std::vector<HostPort> seeds;
  int threads = 1;

  // Every request has a deadline; a client gets an error naming the cause once it passes.
  std::chrono::milliseconds request_timeout{5000};
  std::chrono::milliseconds connect_timeout{1000};
  // The slot map is refreshed on MOVED, on a backend failure, and at least this often.
  std::chrono::milliseconds refresh_interval{10000};
  int max_redirects = 5;

  std::size_t max_clients = 10000;              // per process; more are refused with Redis's own error
  std::size_t max_bulk_bytes = 512ull << 20;    // one argument (Redis's proto-max-bulk-len)
  std::size_t max_arguments = 1024 * 1024;      // arguments in one command
  std::size_t max_client_output = 64ull << 20;  // replies waiting for a slow reader; past it, disconnect
  std::size_t max_pipeline = 100000;            // requests in flight per client; past it, stop reading
  std::chrono::seconds idle_timeout{0};         // 0: never close idle clients
  // SIGTERM drains (Proxy::drain): at most this long for clients' commands in flight, then the process
  // exits. 0: it exits at once, closing every client.
  std::chrono::milliseconds drain_timeout{5000};
  bool allow_admin_commands = false;  // SHUTDOWN, CONFIG SET, DEBUG, CLUSTER writes, ...

  // Blocking commands (BLPOP, XREAD BLOCK, ...) each get a connection of their own to a node: at most this
  // many at once, per process; more are refused with an error saying so.
  std::size_t max_blocking_connections = 1024;
  // Bytes of requests sent to the cluster and not answered yet (kept for a retry until then), per process;
  // past it no client is read until half of them are answered.
  std::size_t max_inflight_bytes = 256ull << 20;

  // Requests kept back for slot holds, in bytes, per process; past it, clients with held commands are not
  // read until their commands are released.
  std::size_t max_held_bytes = 64ull << 20;

  // The proxy's own login to every node, topology reloads included (Redis's masteruser and masterauth, as a
  // replica logs in to its master): AUTH [masteruser] masterauth on every new connection; no AUTH when
  // masterauth is empty. The password comes from --masterauth-file, SLOTSHIFT_MASTERAUTH or the config file
  // as well, so that it need not be on the command line.
  std::string masteruser;
  std::string masterauth;

  // Who may use the proxy. kNone: whoever reaches its port. kPassword: clients AUTH with requirepass, which
  // the proxy checks itself. kAcl: a client's AUTH user pass is checked by the cluster's own ACL, and its
  // commands run on connections logged in as that user, so that each user's key patterns and command
  // categories apply as on Redis. Until a client has logged in it gets Redis's NOAUTH.
  enum class ClientAuth : std::uint8_t { kNone, kPassword, kAcl };
  ClientAuth client_auth = ClientAuth::kNone;
  std::string requirepass;

  // TLS toward clients: with a certificate and key (--tls-cert-file, --tls-key-file) the listening port
  // speaks TLS only. Clients' certificates are required by default, as by Redis (--tls-auth-clients).
  TlsSettings tls;
  // TLS toward the cluster (--backend-tls, --backend-tls-*): every node connection, topology reloads
  // included.
  TlsSettings backend_tls;

  // The admin endpoint (HTTP: /healthz, /readyz, /metrics, /stats, /v1/slots); off unless given. Without a
  // token it may listen on a loopback address only (admin_endpoint_error()).
  HostPort admin{"", 0};
  // When set, required as "Authorization: Bearer <token>" (all but /healthz). Given as --admin-token, as
  // --admin-token-file (kept out of the command line, which `ps` shows to every user), in the environment
  // (SLOTSHIFT_ADMIN_TOKEN), or in the config file ("admin-token", "admin-token-file").
  std::string admin_token;

  // Where read-only commands with keys go (replica_reads.h). kMaster: to the slot's master, as everything
  // else. kReplica: to a replica of that master, and nowhere else (waiting, within the request timeout, for
  // one to be usable). kPreferReplica: to a replica when one is usable, else to the master.
  enum class ReadFrom : std::uint8_t { kMaster, kReplica, kPreferReplica };
  ReadFrom read_from = ReadFrom::kMaster;

  // A unix socket path where this process hands its listening sockets to a successor, and where it first
  // asks a running predecessor for them (upgrade.h). Empty: no binary upgrade.
  std::string upgrade_socket;

  // How log lines are written (log.h): text, or one JSON object per line.
  LogFormat log_format = LogFormat::kText;
};

// Reads a JSON config file into `config`, leaving fields the file does not name as they are. Returns an error
// message, empty on success.
std::string load_config_file(const std::string& path, Config& config);

// "none", "password", "acl" (Config::ClientAuth); false for anything else.
bool parse_client_auth(std::string_view text, Config::ClientAuth& into);

// "master", "replica", "prefer-replica" (Config::ReadFrom); false for anything else.
bool parse_read_from(std::string_view text, Config::ReadFrom& into);
std::string_view read_from_name(Config::ReadFrom read_from);

// Why the client login settings cannot work together, or "": one password for every client and the
// cluster's own users are two different modes.
std::string client_auth_error(const Config& config);

// Why the TLS settings cannot work, or "": files named for a side that is off, or no certificate for clients.
std::string tls_settings_error(const Config& config);

// Whether `host` names the loopback interface: an address in 127.0.0.0/8, ::1 (or 127.x.x.x mapped into
// IPv6), or "localhost".
bool is_loopback(const std::string& host);

// Which numeric setting is out of its range, as an error naming it, or "" (the same bounds whether a setting
// came from the command line or the file).
std::string range_error(const Config& config);

// Why the admin endpoint must not start as configured, or "": an endpoint without a token is open to whoever
// can reach it (holds freeze clients, routes send their commands elsewhere), so it listens on loopback only.
std::string admin_endpoint_error(const Config& config);

}  // namespace slotshift::proxy
