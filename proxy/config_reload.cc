#include "proxy/config_reload.h"

namespace slotshift::proxy {

ReloadPlan plan_reload(const Config& current, const Config& wanted) {
  ReloadPlan plan;
  plan.next = wanted;
  // `get` gives a setting's field of either config (its address): compared, and, for the restart-only
  // ones, put back to the value in force.
  auto take = [&](const char* name, auto get) {
    if (*get(current) == *get(plan.next)) return;
    plan.changed.push_back(name);
  };
  auto keep = [&](const char* name, auto get) {
    if (*get(current) == *get(plan.next)) return;
    plan.restart.push_back(name);
    *get(plan.next) = *get(current);
  };
  keep("listen", [](auto& c) { return &c.listen; });
  keep("threads", [](auto& c) { return &c.threads; });
  keep("admin", [](auto& c) { return &c.admin; });
  // Who may log in, and how, is decided when a client connects: a mode changed under connected clients
  // would leave some logged in under the old rules.
  keep("client-auth", [](auto& c) { return &c.client_auth; });
  keep("read-from", [](auto& c) { return &c.read_from; });
  keep("log-format", [](auto& c) { return &c.log_format; });
  keep("upgrade-socket", [](auto& c) { return &c.upgrade_socket; });
  take("seed", [](auto& c) { return &c.seeds; });
  take("request-timeout-ms", [](auto& c) { return &c.request_timeout; });
  take("connect-timeout-ms", [](auto& c) { return &c.connect_timeout; });
  take("refresh-interval-ms", [](auto& c) { return &c.refresh_interval; });
  take("max-redirects", [](auto& c) { return &c.max_redirects; });
  take("max-clients", [](auto& c) { return &c.max_clients; });
  // A client's parser takes these when it connects.
  take("max-bulk-bytes (new clients)", [](auto& c) { return &c.max_bulk_bytes; });
  take("max-arguments (new clients)", [](auto& c) { return &c.max_arguments; });
  take("max-client-output-bytes", [](auto& c) { return &c.max_client_output; });
  take("max-pipeline", [](auto& c) { return &c.max_pipeline; });
  take("max-held-bytes", [](auto& c) { return &c.max_held_bytes; });
  take("max-blocking-connections", [](auto& c) { return &c.max_blocking_connections; });
  take("max-inflight-bytes", [](auto& c) { return &c.max_inflight_bytes; });
  take("idle-timeout-s", [](auto& c) { return &c.idle_timeout; });
  take("drain-timeout-ms", [](auto& c) { return &c.drain_timeout; });
  take("allow-admin-commands", [](auto& c) { return &c.allow_admin_commands; });
  // Secrets are named, never shown.
  // The admin token goes with the endpoint's address, the client password with the login mode: with the one
  // kept for a restart, the other applied alone could open what the pair closed (an address no longer on
  // loopback without its token, a password mode with no password).
  if (current.admin == wanted.admin) {
    take("admin-token", [](auto& c) { return &c.admin_token; });
  } else {
    keep("admin-token", [](auto& c) { return &c.admin_token; });
  }
  take("masteruser", [](auto& c) { return &c.masteruser; });
  take("masterauth", [](auto& c) { return &c.masterauth; });
  if (current.client_auth == wanted.client_auth) {
    take("requirepass", [](auto& c) { return &c.requirepass; });
  } else {
    keep("requirepass", [](auto& c) { return &c.requirepass; });
  }
  // TLS on or off changes what the listening port, or every node connection, speaks: a restart, and that
  // side's files stay with it. The files of a side that stays on take effect (read again below, in
  // Proxy::reload).
  if (current.tls.enabled != wanted.tls.enabled) {
    keep("tls (on or off, with its files)", [](auto& c) { return &c.tls; });
  } else {
    take("tls-cert-file", [](auto& c) { return &c.tls.cert_file; });
    take("tls-key-file", [](auto& c) { return &c.tls.key_file; });
    take("tls-ca-cert-file", [](auto& c) { return &c.tls.ca_cert_file; });
    take("tls-ca-cert-dir", [](auto& c) { return &c.tls.ca_cert_dir; });
    take("tls-auth-clients", [](auto& c) { return &c.tls.auth_clients; });
  }
  if (current.backend_tls.enabled != wanted.backend_tls.enabled) {
    keep("backend-tls (on or off, with its files)", [](auto& c) { return &c.backend_tls; });
  } else {
    take("backend-tls-cert-file", [](auto& c) { return &c.backend_tls.cert_file; });
    take("backend-tls-key-file", [](auto& c) { return &c.backend_tls.key_file; });
    take("backend-tls-ca-cert-file", [](auto& c) { return &c.backend_tls.ca_cert_file; });
    take("backend-tls-ca-cert-dir", [](auto& c) { return &c.backend_tls.ca_cert_dir; });
    take("backend-tls-server-name", [](auto& c) { return &c.backend_tls.server_name; });
  }
  plan.login_changed =
      current.masteruser != plan.next.masteruser || current.masterauth != plan.next.masterauth;
  // The checks of start-up, on what would take effect.
  for (const auto& check : {client_auth_error, tls_settings_error, admin_endpoint_error}) {
    plan.error = check(plan.next);
    if (!plan.error.empty()) return plan;
  }
  if (plan.next.max_pipeline < 2) plan.error = "--max-pipeline must be at least 2";
  if (plan.next.seeds.empty()) plan.error = "--seed is required";
  return plan;
}

std::string describe(const ReloadPlan& plan) {
  auto list = [](const std::vector<std::string>& names) {
    std::string out;
    for (const auto& n : names)
      out += (out.empty() ? "" : ", ") + n;
    return out;
  };
  std::string out;
  if (!plan.changed.empty()) out = "changed: " + list(plan.changed);
  if (!plan.restart.empty())
    out += (out.empty() ? "" : "; ") + std::string("needs a restart (kept as it was): ") + list(plan.restart);
  return out.empty() ? "no setting changed" : out;
}

}  // namespace slotshift::proxy
