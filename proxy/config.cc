#include "proxy/config.h"

#include <fstream>
#include <nlohmann/json.hpp>

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
      } else if (key == "admin") {
        auto hp = parse_host_port(v.get<std::string>(), error);
        if (!hp) return path + ": admin: " + error;
        config.admin = *hp;
      } else if (key == "admin-token") {
        config.admin_token = v.get<std::string>();
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

}  // namespace slotshift::proxy
