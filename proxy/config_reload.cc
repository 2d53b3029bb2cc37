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
  // TLS on or off changes what the listening port and every node connection speak; the files of a side
  // that stays on are read again.
  keep("tls (on or off)", [](auto& c) { return &c.tls.enabled; });
  keep("backend-tls", [](auto& c) { return &c.backend_tls.enabled; });
  take("seed", [](auto& c) { return &c.seeds; });
  take("request-timeout-ms", [](auto& c) { return &c.request_timeout; });
  take("connect-timeout-ms", [](auto& c) { return &c.connect_timeout; });
  take("refresh-interval-ms", [](auto& c) { return &c.refresh_interval; });
  take("max-redirects", [](auto& c) { return &c.max_redirects; });
  take("max-clients", [](auto& c) { return &c.max_clients; });
  take("max-bulk-bytes", [](auto& c) { return &c.max_bulk_bytes; });
  take("max-arguments", [](auto& c) { return &c.max_arguments; });
  take("max-client-output-bytes", [](auto& c) { return &c.max_client_output; });
  take("max-pipeline", [](auto& c) { return &c.max_pipeline; });
  take("max-held-bytes", [](auto& c) { return &c.max_held_bytes; });
  take("max-blocking-connections", [](auto& c) { return &c.max_blocking_connections; });
  take("max-inflight-bytes", [](auto& c) { return &c.max_inflight_bytes; });
  take("idle-timeout-s", [](auto& c) { return &c.idle_timeout; });
  take("drain-timeout-ms", [](auto& c) { return &c.drain_timeout; });
  take("allow-admin-commands", [](auto& c) { return &c.allow_admin_commands; });
  // Secrets are named, never shown.
  take("admin-token", [](auto& c) { return &c.admin_token; });
  take("masteruser", [](auto& c) { return &c.masteruser; });
  take("masterauth", [](auto& c) { return &c.masterauth; });
  take("requirepass", [](auto& c) { return &c.requirepass; });
  take("tls-cert-file", [](auto& c) { return &c.tls.cert_file; });
  take("tls-key-file", [](auto& c) { return &c.tls.key_file; });
  take("tls-ca-cert-file", [](auto& c) { return &c.tls.ca_cert_file; });
  take("tls-ca-cert-dir", [](auto& c) { return &c.tls.ca_cert_dir; });
  take("tls-auth-clients", [](auto& c) { return &c.tls.auth_clients; });
  take("backend-tls-cert-file", [](auto& c) { return &c.backend_tls.cert_file; });
  take("backend-tls-key-file", [](auto& c) { return &c.backend_tls.key_file; });
  take("backend-tls-ca-cert-file", [](auto& c) { return &c.backend_tls.ca_cert_file; });
  take("backend-tls-ca-cert-dir", [](auto& c) { return &c.backend_tls.ca_cert_dir; });
  take("backend-tls-server-name", [](auto& c) { return &c.backend_tls.server_name; });
  plan.login_changed =
      current.masteruser != plan.next.masteruser || current.masterauth != plan.next.masterauth;
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
