// The admin endpoint's HTTP connections: cpp-httplib's Server with a connection loop of our own. cpp-httplib
// 0.11 (Debian 12's) reads a request line or a header line of any length into memory, keeps reading a slow
// client's request for as long as each byte comes within the read timeout, and keeps a connection open after
// a handler answered without reading the body (a refused token), so that the body is parsed as the next
// request, into memory again. Each of those lets one client grow the process or hold a thread for as long as
// it likes. This loop gives every connection:
//
//   - a byte budget per request (request line, headers and body): past it the read fails, the connection
//     closes;
//   - a deadline per request, from its first byte to its last: a slow sender is cut off;
//   - a limit on idle time between requests (before the first one too) and on requests per connection;
//   - a close after any request whose body was not read (refused on its headers alone, see admin.cc) or that
//     never reached a handler.
//
// As cpp-httplib's own SSLServer does, it overrides process_and_close_socket() and hands each request to
// process_request(); routing, handlers and replies are cpp-httplib's.
#pragma once

#include <httplib.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>

namespace slotshift::proxy {

struct AdminHttpLimits {
  std::size_t request_bytes = 0;              // request line, headers and body of one request
  std::chrono::milliseconds request_time{0};  // from a request's first byte to its last
  std::chrono::milliseconds idle{0};          // waiting for a request, the first one included
  std::chrono::milliseconds write_time{0};    // for each write of a reply to make progress
  std::size_t requests_per_connection = 0;
};

class AdminHttpServer : public httplib::Server {
 public:
  explicit AdminHttpServer(const AdminHttpLimits& limits);
  ~AdminHttpServer() override;
  AdminHttpServer(const AdminHttpServer&) = delete;
  AdminHttpServer& operator=(const AdminHttpServer&) = delete;

  // After stop(): connections waiting for their next request end now rather than at their idle limit.
  void end_idle_waits();

 private:
  bool process_and_close_socket(socket_t sock) override;
  // Waits up to the idle limit for `sock` to have a request; false on timeout, on a hang-up, or once
  // end_idle_waits() was called. It sleeps until one of those: a kept connection (the orchestrator keeps one
  // to every proxy during a move) costs no wake-up while it is idle.
  bool wait_for_request(socket_t sock) const;

  AdminHttpLimits limits_;
  int stop_fd_ = -1;  // an eventfd, readable once end_idle_waits() was called; -1 if none could be made
};

// The request's Content-Length: 0 without one, nullopt when it is not a decimal number.
std::optional<std::uint64_t> content_length(const httplib::Request& req);

}  // namespace slotshift::proxy
