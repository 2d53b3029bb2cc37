// One HTTP/1.1 POST to many endpoints at once, from one thread, under one deadline: how the orchestrator
// reaches every proxy's admin endpoint at a cutover.
//
// Why not a thread and a fresh connection per endpoint per call (cpp-httplib's Client, as before): with 50
// proxies a cutover cost 3 x 50 thread starts and TCP handshakes, and the proxies 3 x 50 accepts and thread
// hand-offs, on every batch. Here every endpoint keeps one keep-alive connection from call to call, and all
// of them are driven by non-blocking sockets and one poll(): a call costs one write and one read per
// endpoint, whatever their number.
//
// A kept connection is reused only while the server's advertised keep-alive (`Keep-Alive: timeout=T, max=M`)
// leaves a clear margin; a request that meets a connection the server closed anyway (no byte of a reply came)
// is sent once more on a new connection, within the same deadline. Every request the control path sends is
// idempotent (a HOLD by the same owner extends itself, ROUTE and RELEASE set a state), so a second copy is
// harmless. A connection whose reply did not come by the deadline is closed: a late reply must never be read
// as the answer to the next request.
//
// Not thread-safe: one caller at a time.
#pragma once

#include <chrono>
#include <cstddef>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/host_port.h"

namespace slotshift {

struct HttpAnswer {
  int status = 0;     // the HTTP status; 0 when no reply came
  std::string body;   // the reply's body
  std::string error;  // when status is 0: why ("connection refused", "no reply within 120 ms", ...)
};

class HttpFanout {
 public:
  using Clock = std::chrono::steady_clock;

  // `bearer_token` ("" for none) goes with every request. A connection not made within `connect_timeout`
  // counts as no answer.
  HttpFanout(std::string bearer_token, std::chrono::milliseconds connect_timeout);
  ~HttpFanout();
  HttpFanout(const HttpFanout&) = delete;
  HttpFanout& operator=(const HttpFanout&) = delete;

  // POSTs `body` (JSON) to `path` on every endpoint at once and waits until each has answered or `deadline`
  // has passed. One answer per endpoint, in their order.
  std::vector<HttpAnswer> post(const std::vector<HostPort>& endpoints, const std::string& path,
                               const std::string& body, Clock::time_point deadline);

  // Opens a connection, at once, to every endpoint that has no usable kept one, and has each served a first
  // request (GET /healthz) by `deadline`; keeps them for the next post(): a call whose deadline is about the
  // endpoints' answer then does not also pay for a thousand TCP handshakes, accepts and first requests at the
  // same moment. Returns those that did not answer (HOST:PORT, and why), whose connection is not kept.
  std::vector<std::pair<std::string, std::string>> connect_ahead(const std::vector<HostPort>& endpoints,
                                                                 Clock::time_point deadline);

  // Connections made so far (kept ones reused do not count): for tests and the benchmark.
  std::size_t connects() const { return connects_; }

 private:
  struct Kept {
    int fd = -1;
    Clock::time_point idle_since;
    int requests = 0;                        // sent on it so far
    int max_requests = 0;                    // the server's `max=`; 0 when it did not say
    std::chrono::milliseconds keep_alive{};  // the server's `timeout=`; 0 when it did not say
  };
  struct Exchange;

  // `method` `path` with `body` (JSON; none when empty) to every endpoint at once, until `deadline`.
  std::vector<HttpAnswer> exchange(const std::vector<HostPort>& endpoints, const char* method,
                                   const std::string& path, const std::string& body,
                                   Clock::time_point deadline);
  // A kept connection to `key` that may carry one more request, taken out of the pool; -1 when there is
  // none.
  int take_kept(const std::string& key, Kept& kept);
  bool start_connect(Exchange& x, std::string& error);
  void finish(Exchange& x, HttpAnswer& answer, Clock::time_point now);

  std::string token_;
  std::chrono::milliseconds connect_timeout_;
  std::map<std::string, Kept> kept_;  // by HOST:PORT
  std::size_t connects_ = 0;
};

}  // namespace slotshift
