// The admin endpoint: HTTP on its own threads, off the request path. GET /healthz (alive), /readyz (every
// worker has a slot map), /metrics (Prometheus text), /stats (JSON), and the slot hold / route / release
// control under /v1/slots (slot_control.h). With a token configured, everything but /healthz wants
// "Authorization: Bearer <token>". Bound to loopback unless configured otherwise (and then only with a
// token: see admin_endpoint_error() in config.h).
//
// Anyone who can reach it may try anything, so every request is judged on its headers before its body is
// read: the token first (401), then the body's size (413 past kMaxBody, 411 without a Content-Length). How
// long a connection may hold a thread is bounded in admin_http.h, and HOLDs, which wait for their drain, are
// capped, so that slow or idle clients leave threads for /healthz, /metrics and the RELEASE that ends a hold.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/host_port.h"
#include "proxy/slot_control.h"

namespace slotshift::proxy {

class Proxy;
class AdminHttpServer;

class AdminServer {
 public:
  AdminServer(Proxy& proxy, HostPort listen, std::string token);
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // Binds and starts serving; returns an error message or "".
  std::string start();
  void stop();
  // A reload's token (SIGHUP): requests from now on are checked against it.
  void set_token(std::string token);

  std::string metrics() const;
  std::string stats_json() const;

  // The largest request body taken. The control bodies are a few hundred bytes.
  static constexpr std::size_t kMaxBody = 64 * 1024;
  // Request threads. Each serves one connection at a time, for at most the limits of admin_http.h per
  // request; HOLDs take at most SlotControl::kMaxWaitingHolds of them. Idle threads cost no CPU.
  static constexpr std::size_t kThreads = 16;
  // A request must arrive whole within kRequestTime of its first byte; a connection may wait kIdle for its
  // next request; each write of a reply must progress within kWriteTime.
  static constexpr std::chrono::milliseconds kRequestTime{2000};
  static constexpr std::chrono::milliseconds kIdle{2000};
  static constexpr std::chrono::milliseconds kWriteTime{2000};
  static constexpr std::size_t kRequestsPerConnection = 32;

 private:
  std::string token() const;

  Proxy& proxy_;
  HostPort listen_;
  mutable std::mutex token_mutex_;  // a reload replaces the token while requests are checked
  std::string token_;
  SlotControl control_;
  std::unique_ptr<AdminHttpServer> server_;
  std::thread thread_;
};

}  // namespace slotshift::proxy
