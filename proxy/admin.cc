#include "proxy/admin.h"

#include "proxy/login.h"

#include <httplib.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>

#include "proxy/admin_http.h"
#include "proxy/worker.h"

namespace slotshift::proxy {
namespace {

// Why a request is refused before its handler runs.
struct Refusal {
  int status;
  std::string message;
};

// An error as the endpoint writes every one: JSON on the control paths, plain text on the others.
void error_reply(const httplib::Request& req, httplib::Response& res, int status,
                 const std::string& message) {
  res.status = status;
  if (req.path.starts_with("/v1/")) {
    res.set_content(nlohmann::json{{"error", message}}.dump() + "\n", "application/json");
  } else {
    res.set_content(message + "\n", "text/plain");
  }
}

}  // namespace

AdminServer::AdminServer(Proxy& proxy, HostPort listen, std::string token)
    : proxy_(proxy),
      listen_(std::move(listen)),
      token_(std::move(token)),
      control_(proxy),
      server_(std::make_unique<AdminHttpServer>(AdminHttpLimits{
          .request_bytes = kMaxBody + 16 * 1024,  // and the request line and headers (8 KiB a line at most)
          .request_time = kRequestTime,
          .idle = kIdle,
          .write_time = kWriteTime,
          .requests_per_connection = kRequestsPerConnection})) {
  // What cpp-httplib tells clients (Keep-Alive: timeout=, max=), and its own socket timeouts: the same
  // limits.
  server_->set_keep_alive_timeout(std::chrono::ceil<std::chrono::seconds>(kIdle).count());
  server_->set_keep_alive_max_count(kRequestsPerConnection);
  server_->set_read_timeout(kRequestTime);
  server_->set_write_timeout(kWriteTime);
}

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
  // The one check of every request, on its headers alone: cpp-httplib calls it (as the pre-routing handler,
  // or for "Expect: 100-continue") before it reads a byte of the body, so a caller without the token, or with
  // a body too large, costs a header's worth of memory. The connection is then closed (admin_http.h).
  auto check = [this](const httplib::Request& req) -> std::optional<Refusal> {
    // The probes need no token: a Kubernetes httpGet probe cannot send one, and they tell only whether the
    // process is up and whether clients should be sent to it.
    if (req.path != "/healthz" && req.path != "/readyz") {
      // Read once: a reload may replace it between two reads.
      const std::string wanted = token();
      if (!wanted.empty() && !same_secret(req.get_header_value("Authorization"), "Bearer " + wanted))
        return Refusal{401, "unauthorized: send Authorization: Bearer <admin token>"};
    }
    const auto length = content_length(req);
    if (!length) return Refusal{400, "malformed Content-Length"};
    const bool has_body = req.method == "POST" || req.method == "PUT" || req.method == "PATCH" ||
                          req.method == "DELETE" || req.method == "PRI";
    if (req.has_header("Transfer-Encoding") || (has_body && !req.has_header("Content-Length"))) {
      return Refusal{411, "send the body with a Content-Length (at most " + std::to_string(kMaxBody) +
                              " bytes); chunked bodies are not taken"};
    }
    if (*length > kMaxBody) {
      return Refusal{413, "the body is " + std::to_string(*length) + " bytes; at most " +
                              std::to_string(kMaxBody) + " are taken"};
    }
    return std::nullopt;
  };
  server_->set_pre_routing_handler([check](const httplib::Request& req, httplib::Response& res) {
    const auto refusal = check(req);
    if (!refusal) return httplib::Server::HandlerResponse::Unhandled;
    error_reply(req, res, refusal->status, refusal->message);
    res.set_header("Connection", "close");
    return httplib::Server::HandlerResponse::Handled;
  });
  server_->set_expect_100_continue_handler([check](const httplib::Request& req, httplib::Response& res) {
    const auto refusal = check(req);
    if (!refusal) return 100;
    error_reply(req, res, refusal->status, refusal->message);
    res.set_header("Connection", "close");
    return refusal->status;
  });
  // cpp-httplib's own limit, behind the check above.
  server_->set_payload_max_length(kMaxBody);

  server_->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  server_->Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
    std::string why;
    const bool ready = proxy_.ready(&why);
    res.status = ready ? 200 : 503;
    res.set_content(ready ? "ready\n" : why + "\n", "text/plain");
  });
  server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics(), "text/plain; version=0.0.4");
  });
  server_->Get("/stats", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(stats_json(), "application/json");
  });

  // The slot control speaks JSON both ways, errors included.
  auto control = [](const ControlReply& reply, httplib::Response& res) {
    res.status = reply.status;
    res.set_content(reply.body, "application/json");
  };
  server_->Post("/v1/slots/hold", [this, control](const httplib::Request& req, httplib::Response& res) {
    control(control_.hold(req.body), res);
  });
  server_->Post("/v1/slots/route", [this, control](const httplib::Request& req, httplib::Response& res) {
    control(control_.route(req.body), res);
  });
  server_->Post("/v1/slots/release", [this, control](const httplib::Request& req, httplib::Response& res) {
    control(control_.release(req.body), res);
  });
  server_->Post("/v1/slots/handoff", [this, control](const httplib::Request& req, httplib::Response& res) {
    control(control_.handoff(req.body), res);
  });
  server_->Post("/v1/slots/check", [this, control](const httplib::Request& req, httplib::Response& res) {
    control(control_.check(req.body), res);
  });
  server_->Get("/v1/slots", [this, control](const httplib::Request&, httplib::Response& res) {
    control(control_.list(), res);
  });
  server_->new_task_queue = [] { return new httplib::ThreadPool(kThreads); };
  if (!server_->bind_to_port(listen_.host.c_str(), listen_.port)) {
    return "cannot listen for the admin endpoint on " + listen_.str();
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  return "";
}

void AdminServer::set_token(std::string token) {
  std::lock_guard lock(token_mutex_);
  token_ = std::move(token);
}

std::string AdminServer::token() const {
  std::lock_guard lock(token_mutex_);
  return token_;
}

void AdminServer::stop() {
  if (server_) {
    server_->stop();
    server_->end_idle_waits();
  }
  if (thread_.joinable()) thread_.join();
}

}  // namespace slotshift::proxy
