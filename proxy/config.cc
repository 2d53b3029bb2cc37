#include "proxy/config.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "common/secret_file.h"

namespace slotshift::proxy {

std::string load_config_file(const std::string& path, Config& config) {
  std::ifstream in(path);
  if (!in) return "cannot read " + path;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    return path + ": not valid JSON: " + e.what();
  }
  if (!j.is_object()) return path + ": expected a JSON object";
  for (const char* secret : {"admin-token", "masterauth", "requirepass"})
    if (j.contains(secret) && j.contains(std::string(secret) + "-file"))
      return path + ": give " + secret + " or " + secret + "-file, not both";
  try {
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& key = it.key();
      const auto& v = it.value();
      std::string error;
      if (key == "listen") {
        auto hp = parse_host_port(v.get<std::string>(), error);
        if (!hp) return path + ": listen: " + error;
        config.listen = *hp;
      } else if (key == "seed") {
        config.seeds.clear();
        for (const auto& s : v) {
          auto hp = parse_host_port(s.get<std::string>(), error);
          if (!hp) return path + ": seed: " + error;
          config.seeds.push_back(*hp);
        }
      } else if (key == "threads") {
        config.threads = v.get<int>();
      } else if (key == "request-timeout-ms") {
        config.request_timeout = std::chrono::milliseconds(v.get<long>());
      } else if (key == "connect-timeout-ms") {
        config.connect_timeout = std::chrono::milliseconds(v.get<long>());
      } else if (key == "refresh-interval-ms") {
        config.refresh_interval = std::chrono::milliseconds(v.get<long>());
      } else if (key == "max-redirects") {
        config.max_redirects = v.get<int>();
      } else if (key == "max-clients") {
        config.max_clients = v.get<std::size_t>();
      } else if (key == "max-bulk-bytes") {
        config.max_bulk_bytes = v.get<std::size_t>();
      } else if (key == "max-arguments") {
        config.max_arguments = v.get<std::size_t>();
      } else if (key == "max-client-output-bytes") {
        config.max_client_output = v.get<std::size_t>();
      } else if (key == "max-pipeline") {
        config.max_pipeline = v.get<std::size_t>();
      } else if (key == "max-held-bytes") {
        config.max_held_bytes = v.get<std::size_t>();
      } else if (key == "max-blocking-connections") {
        config.max_blocking_connections = v.get<std::size_t>();
      } else if (key == "max-inflight-bytes") {
        config.max_inflight_bytes = v.get<std::size_t>();
      } else if (key == "idle-timeout-s") {
        config.idle_timeout = std::chrono::seconds(v.get<long>());
      } else if (key == "upgrade-socket") {
        config.upgrade_socket = v.get<std::string>();
      } else if (key == "log-format") {
        if (!parse_log_format(v.get<std::string>().c_str(), config.log_format))
          return path + ": log-format: expected text or json";
      } else if (key == "drain-timeout-ms") {
        config.drain_timeout = std::chrono::milliseconds(v.get<long>());
      } else if (key == "admin") {
        auto hp = parse_host_port(v.get<std::string>(), error);
        if (!hp) return path + ": admin: " + error;
        config.admin = *hp;
      } else if (key == "admin-token") {
        config.admin_token = v.get<std::string>();
      } else if (key == "admin-token-file") {
        const auto why = read_secret_file(v.get<std::string>(), config.admin_token);
        if (!why.empty()) return path + ": admin-token-file: " + why;
      } else if (key == "masteruser") {
        config.masteruser = v.get<std::string>();
      } else if (key == "masterauth") {
        config.masterauth = v.get<std::string>();
      } else if (key == "masterauth-file") {
        const auto why = read_secret_file(v.get<std::string>(), config.masterauth);
        if (!why.empty()) return path + ": masterauth-file: " + why;
      } else if (key == "requirepass") {
        config.requirepass = v.get<std::string>();
      } else if (key == "requirepass-file") {
        const auto why = read_secret_file(v.get<std::string>(), config.requirepass);
        if (!why.empty()) return path + ": requirepass-file: " + why;
      } else if (key == "client-auth") {
        if (!parse_client_auth(v.get<std::string>(), config.client_auth))
          return path + ": client-auth: expected none, password or acl";
      } else if (key == "read-from") {
        if (!parse_read_from(v.get<std::string>(), config.read_from))
          return path + ": read-from: expected master, replica or prefer-replica";
      } else if (key == "tls-cert-file") {
        config.tls.cert_file = v.get<std::string>();
      } else if (key == "tls-key-file") {
        config.tls.key_file = v.get<std::string>();
      } else if (key == "tls-ca-cert-file") {
        config.tls.ca_cert_file = v.get<std::string>();
      } else if (key == "tls-ca-cert-dir") {
        config.tls.ca_cert_dir = v.get<std::string>();
      } else if (key == "tls-auth-clients") {
        if (!parse_tls_auth_clients(v.get<std::string>(), config.tls.auth_clients))
          return path + ": tls-auth-clients: expected yes, no or optional";
      } else if (key == "backend-tls") {
        config.backend_tls.enabled = v.get<bool>();
      } else if (key == "backend-tls-cert-file") {
        config.backend_tls.cert_file = v.get<std::string>();
      } else if (key == "backend-tls-key-file") {
        config.backend_tls.key_file = v.get<std::string>();
      } else if (key == "backend-tls-ca-cert-file") {
        config.backend_tls.ca_cert_file = v.get<std::string>();
      } else if (key == "backend-tls-ca-cert-dir") {
        config.backend_tls.ca_cert_dir = v.get<std::string>();
      } else if (key == "backend-tls-server-name") {
        config.backend_tls.server_name = v.get<std::string>();
      } else if (key == "allow-admin-commands") {
        config.allow_admin_commands = v.get<bool>();
      } else {
        return path + ": unknown setting '" + key + "'";
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return path + ": " + e.what();
  }
  return "";
}

std::string tls_settings_error(const Config& config) {
  const TlsSettings& c = config.tls;
  if ((!c.key_file.empty() || !c.ca_cert_file.empty() || !c.ca_cert_dir.empty()) && c.cert_file.empty())
    return "TLS toward clients needs --tls-cert-file and --tls-key-file (the other --tls-* settings apply "
           "to them)";
  const TlsSettings& b = config.backend_tls;
  if (!b.enabled && (!b.cert_file.empty() || !b.key_file.empty() || !b.ca_cert_file.empty() ||
                     !b.ca_cert_dir.empty() || !b.server_name.empty()))
    return "--backend-tls-* settings are given but TLS toward the cluster is off: add --backend-tls";
  return "";
}

bool parse_client_auth(std::string_view text, Config::ClientAuth& into) {
  if (text == "none") {
    into = Config::ClientAuth::kNone;
  } else if (text == "password") {
    into = Config::ClientAuth::kPassword;
  } else if (text == "acl") {
    into = Config::ClientAuth::kAcl;
  } else {
    return false;
  }
  return true;
}

bool parse_read_from(std::string_view text, Config::ReadFrom& into) {
  if (text == "master") {
    into = Config::ReadFrom::kMaster;
  } else if (text == "replica") {
    into = Config::ReadFrom::kReplica;
  } else if (text == "prefer-replica") {
    into = Config::ReadFrom::kPreferReplica;
  } else {
    return false;
  }
  return true;
}

std::string_view read_from_name(Config::ReadFrom read_from) {
  switch (read_from) {
    case Config::ReadFrom::kReplica:
      return "replica";
    case Config::ReadFrom::kPreferReplica:
      return "prefer-replica";
    case Config::ReadFrom::kMaster:
      break;
  }
  return "master";
}

std::string client_auth_error(const Config& config) {
  using enum Config::ClientAuth;
  if (config.client_auth == kAcl && !config.requirepass.empty())
    return "--requirepass is one password for every client, checked by the proxy; --client-auth acl checks "
           "each client's user and password with the cluster. Give one of them";
  if (config.client_auth == kPassword && config.requirepass.empty())
    return "--client-auth password needs the password: --requirepass-file FILE, SLOTSHIFT_REQUIREPASS or "
           "--requirepass";
  if (!config.masteruser.empty() && config.masterauth.empty())
    return "--masteruser " + config.masteruser +
           " needs its password: --masterauth-file FILE, SLOTSHIFT_MASTERAUTH or --masterauth";
  return "";
}

bool is_loopback(const std::string& host) {
  std::string lower = host;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  if (lower == "localhost") return true;
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;
}

std::string admin_endpoint_error(const Config& config) {
  if (config.admin.port == 0 || !config.admin_token.empty() || is_loopback(config.admin.host)) return "";
  return "--admin " + config.admin.str() +
         " is not a loopback address, and no admin token is set: anyone "
         "who reaches it could hold and route slots. Give a token (--admin-token-file FILE, "
         "SLOTSHIFT_ADMIN_TOKEN or --admin-token), or listen on 127.0.0.1";
}

std::string range_error(const Config& config) {
  // Every number a setting may take, for the file and the command line alike: a zero refresh interval would
  // stop the worker's slow tick, a zero bound would never let a client be read again.
  constexpr long long kNoMax = std::numeric_limits<long long>::max();
  struct Bound {
    const char* name;
    long long value, min, max;
  };
  auto count = [](std::size_t n) { return static_cast<long long>(std::min<std::size_t>(n, kNoMax)); };
  const Bound bounds[] = {
      {"threads", config.threads, 1, 256},
      {"request-timeout-ms", config.request_timeout.count(), 1, 3600000},
      {"connect-timeout-ms", config.connect_timeout.count(), 1, 600000},
      {"refresh-interval-ms", config.refresh_interval.count(), 100, 3600000},
      {"drain-timeout-ms", config.drain_timeout.count(), 0, 3600000},
      {"idle-timeout-s", config.idle_timeout.count(), 0, 365LL * 24 * 3600},
      {"max-redirects", config.max_redirects, 0, 100},
      {"max-clients", count(config.max_clients), 1, kNoMax},
      {"max-bulk-bytes", count(config.max_bulk_bytes), 1, kNoMax},
      {"max-arguments", count(config.max_arguments), 1, kNoMax},
      {"max-client-output-bytes", count(config.max_client_output), 1, kNoMax},
      {"max-held-bytes", count(config.max_held_bytes), 1, kNoMax},
      {"max-blocking-connections", count(config.max_blocking_connections), 1, kNoMax},
      {"max-inflight-bytes", count(config.max_inflight_bytes), 1, kNoMax},
      // Reading resumes once a client is under half of it: below 2 it never would.
      {"max-pipeline", count(config.max_pipeline), 2, kNoMax},
  };
  for (const Bound& b : bounds) {
    if (b.value >= b.min && b.value <= b.max) continue;
    if (b.max == kNoMax) return "--" + std::string(b.name) + " must be at least " + std::to_string(b.min);
    return "--" + std::string(b.name) + " must be between " + std::to_string(b.min) + " and " +
           std::to_string(b.max);
  }
  return "";
}

}  // namespace slotshift::proxy
