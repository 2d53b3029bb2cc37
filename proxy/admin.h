// The admin endpoint: HTTP on its own thread, off the request path. GET /healthz (alive), /readyz (every
// worker has a slot map), /metrics (Prometheus text), /stats (JSON), and the slot hold / route / release
// control under /v1/slots (slot_control.h). With a token configured, everything but /healthz wants
// "Authorization: Bearer <token>". Bound to loopback unless configured otherwise.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "common/host_port.h"
#include "proxy/slot_control.h"

namespace httplib {
class Server;
}

namespace slotshift::proxy {

class Proxy;

class AdminServer {
 public:
  AdminServer(Proxy& proxy, HostPort listen, std::string token);
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // Binds and starts serving; returns an error message or "".
  std::string start();
  void stop();

  std::string metrics() const;
  std::string stats_json() const;

 private:
  Proxy& proxy_;
  HostPort listen_;
  std::string token_;
  SlotControl control_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

}  // namespace slotshift::proxy
