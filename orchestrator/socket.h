// A TCP connection, optionally TLS, with a deadline on every wait, for every connection of the orchestrator
// to a node (control connections, the replica link to a source, the pipelined writer into a target). The
// socket is non-blocking underneath; every call polls until its deadline. Failures are values: false/0 and a
// message in error() that names the node.
//
// With TLS, one thread may read while another writes (the replica link's receiver reads while the copier
// answers GETACK): OpenSSL forbids concurrent calls on one SSL, so each SSL call is made under a lock, and
// the waits (poll) outside it.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "common/host_port.h"
#include "common/tls_context.h"

namespace slotshift {

using Clock = std::chrono::steady_clock;

class Socket {
 public:
  Socket();
  ~Socket();
  Socket(Socket&& other) noexcept;
  Socket& operator=(Socket&& other) noexcept;
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  // Resolves and connects (TCP_NODELAY) before `deadline`, then, with `tls`, completes the TLS handshake
  // (the node's certificate checked) before the same deadline. The context must outlive the connection.
  bool connect(const HostPort& node, Clock::time_point deadline, const TlsContext* tls = nullptr);
  // Writes every byte before `deadline`.
  bool write_all(std::string_view bytes, Clock::time_point deadline);
  // Writes what the kernel takes now without waiting; returns the count (0 when it would block), or -1.
  long write_some(std::string_view bytes);
  // Reads at least one byte (up to n) before `deadline`. Returns the count; 0 on timeout (error() says so),
  // -1 on a closed or failed connection.
  long read_some(char* dst, std::size_t n, Clock::time_point deadline);
  // Waits until the socket is readable (or, with `want_write`, writable too) or the deadline passes. Returns
  // a poll(2) revents mask (0 on timeout). With TLS, bytes already decrypted and not yet read count as
  // readable: poll on fd() alone would not see them.
  short wait(bool want_write, Clock::time_point deadline);
  void close();

  bool is_open() const { return fd_ >= 0; }
  bool is_tls() const { return tls_ != nullptr; }
  int fd() const { return fd_; }
  int local_port() const;
  const std::string& error() const { return error_; }
  // error() without the node's address in front, for callers that name the node themselves.
  const std::string& reason() const { return reason_; }
  const HostPort& peer() const { return peer_; }

 private:
  bool fail(std::string message);
  bool handshake(const TlsContext& context, Clock::time_point deadline);
  long tls_write(std::string_view bytes, bool& want_read);
  long tls_read(char* dst, std::size_t n, Clock::time_point deadline);

  struct Tls;  // the SSL and the lock its calls take
  int fd_ = -1;
  std::unique_ptr<Tls> tls_;
  HostPort peer_;
  std::string error_;
  std::string reason_;
};

}  // namespace slotshift
