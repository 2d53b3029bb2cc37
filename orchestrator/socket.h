// A TCP connection with a deadline on every wait, for the orchestrator's data connections (the replica link
// to a source, the pipelined writer into a target). The socket is non-blocking underneath; every call polls
// until its deadline. Failures are values: false/0 and a message in error().
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

#include "common/host_port.h"

namespace slotshift {

using Clock = std::chrono::steady_clock;

class Socket {
 public:
  Socket() = default;
  ~Socket();
  Socket(Socket&& other) noexcept;
  Socket& operator=(Socket&& other) noexcept;
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  // Resolves and connects (TCP_NODELAY) before `deadline`.
  bool connect(const HostPort& node, Clock::time_point deadline);
  // Writes every byte before `deadline`.
  bool write_all(std::string_view bytes, Clock::time_point deadline);
  // Writes what the kernel takes now without waiting; returns the count (0 when it would block), or -1.
  long write_some(std::string_view bytes);
  // Reads at least one byte (up to n) before `deadline`. Returns the count; 0 on timeout (error() says so),
  // -1 on a closed or failed connection.
  long read_some(char* dst, std::size_t n, Clock::time_point deadline);
  // Waits until the socket is readable (or, with `want_write`, writable too) or the deadline passes. Returns
  // a poll(2) revents mask (0 on timeout).
  short wait(bool want_write, Clock::time_point deadline);
  void close();

  bool is_open() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  int local_port() const;
  const std::string& error() const { return error_; }
  const HostPort& peer() const { return peer_; }

 private:
  bool fail(std::string message);

  int fd_ = -1;
  HostPort peer_;
  std::string error_;
};

}  // namespace slotshift
