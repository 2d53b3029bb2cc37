#include "proxy/admin.h"

#include <httplib.h>

#include <nlohmann/json.hpp>

#include "proxy/worker.h"

namespace slotshift::proxy {

AdminServer::AdminServer(Proxy& proxy, HostPort listen, std::string token)
    : proxy_(proxy),
      listen_(std::move(listen)),
      token_(std::move(token)),
      control_(proxy),
      server_(new httplib::Server) {}

AdminServer::~AdminServer() {
  stop();
}

std::string AdminServer::metrics() const {
  const Totals t = proxy_.totals();
  std::string out;
  for (std::size_t i = 0; i < kCounterCount; ++i) {
    const auto& c = kCounters[i];
    const std::string name = "slotshift_proxy_" + std::string(c.name) + (c.gauge ? "" : "_total");
    out += "# HELP " + name + " " + std::string(c.help) + "\n";
    out += "# TYPE " + name + (c.gauge ? " gauge\n" : " counter\n");
    out += name + " " + std::to_string(t.counters[i]) + "\n";
  }
  // The latency histogram in seconds, cumulative as Prometheus wants it.
  const std::string h = "slotshift_proxy_request_duration_seconds";
  out += "# HELP " + h + " time from a request's parse to its reply being queued for the client\n";
  out += "# TYPE " + h + " histogram\n";
  std::uint64_t cumulative = 0;
  for (std::size_t b = 0; b < kLatencyBuckets; ++b) {
    cumulative += t.latency[b];
    out += h + "_bucket{le=\"" + std::to_string(static_cast<double>(Totals::bucket_bound_us(b)) / 1e6) +
           "\"} " + std::to_string(cumulative) + "\n";
  }
  out += h + "_bucket{le=\"+Inf\"} " + std::to_string(cumulative) + "\n";
  out += h + "_count " + std::to_string(cumulative) + "\n";
  out += "# HELP slotshift_proxy_ready 1 once every worker has loaded a slot map\n";
  out += "# TYPE slotshift_proxy_ready gauge\n";
  out += std::string("slotshift_proxy_ready ") + (proxy_.ready() ? "1" : "0") + "\n";
  return out;
}

std::string AdminServer::stats_json() const {
  const Totals t = proxy_.totals();
  nlohmann::json j;
  for (std::size_t i = 0; i < kCounterCount; ++i)
    j[std::string(kCounters[i].name)] = t.counters[i];
  j["latency_p50_us_at_most"] = t.latency_quantile_us(0.50);
  j["latency_p99_us_at_most"] = t.latency_quantile_us(0.99);
  j["latency_p999_us_at_most"] = t.latency_quantile_us(0.999);
  j["ready"] = proxy_.ready();
  j["version"] = std::string(kVersion);
  j["threads"] = proxy_.config().threads;
  return j.dump(2) + "\n";
}

std::string AdminServer::start() {
  auto authorized = [this](const httplib::Request& req, httplib::Response& res) {
    if (token_.empty() || req.get_header_value("Authorization") == "Bearer " + token_) return true;
    res.status = 401;
    res.set_content("unauthorized: send Authorization: Bearer <admin token>\n", "text/plain");
    return false;
  };
  server_->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  server_->Get("/readyz", [this, authorized](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    const bool ready = proxy_.ready();
    res.status = ready ? 200 : 503;
    res.set_content(ready ? "ready\n" : "no slot map yet\n", "text/plain");
  });
  server_->Get("/metrics", [this, authorized](const httplib::Request& req, httplib::Response& res) {
    if (authorized(req, res)) res.set_content(metrics(), "text/plain; version=0.0.4");
  });
  server_->Get("/stats", [this, authorized](const httplib::Request& req, httplib::Response& res) {
    if (authorized(req, res)) res.set_content(stats_json(), "application/json");
  });

  // The slot control speaks JSON both ways, errors included.
  auto control = [](const ControlReply& reply, httplib::Response& res) {
    res.status = reply.status;
    res.set_content(reply.body, "application/json");
  };
  auto control_authorized = [this, control](const httplib::Request& req, httplib::Response& res) {
    if (token_.empty() || req.get_header_value("Authorization") == "Bearer " + token_) return true;
    control({401, "{\"error\":\"unauthorized: send Authorization: Bearer <admin token>\"}\n"}, res);
    return false;
  };
  server_->Post("/v1/slots/hold",
                [this, control, control_authorized](const httplib::Request& req, httplib::Response& res) {
                  if (control_authorized(req, res)) control(control_.hold(req.body), res);
                });
  server_->Post("/v1/slots/route",
                [this, control, control_authorized](const httplib::Request& req, httplib::Response& res) {
                  if (control_authorized(req, res)) control(control_.route(req.body), res);
                });
  server_->Post("/v1/slots/release",
                [this, control, control_authorized](const httplib::Request& req, httplib::Response& res) {
                  if (control_authorized(req, res)) control(control_.release(req.body), res);
                });
  server_->Get("/v1/slots",
               [this, control, control_authorized](const httplib::Request& req, httplib::Response& res) {
                 if (control_authorized(req, res)) control(control_.list(), res);
               });
  // Few requests, each cheap but a HOLD, which waits for its drain: four threads let a HOLD or two wait
  // while /metrics and a RELEASE still get through, and keep the proxy's cores for clients.
  server_->new_task_queue = [] { return new httplib::ThreadPool(4); };
  if (!server_->bind_to_port(listen_.host.c_str(), listen_.port)) {
    return "cannot listen for the admin endpoint on " + listen_.str();
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  return "";
}

void AdminServer::stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace slotshift::proxy
