#include "orchestrator/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <mutex>
#include <utility>

namespace slotshift {
namespace {

int ms_until(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(std::min<long long>(left + 1, 1 << 30));
}

// Polls one descriptor until `deadline`: the revents, 0 on timeout, POLLERR when poll itself fails.
short poll_fd(int fd, short events, Clock::time_point deadline) {
  pollfd p{fd, events, 0};
  for (;;) {
    const int ready = ::poll(&p, 1, ms_until(deadline));
    if (ready > 0) return p.revents;
    if (ready == 0) return 0;
    if (errno != EINTR) return POLLERR;
  }
}

// OpenSSL writes to the socket with write(2), which raises SIGPIPE once the node has closed its end (the
// plain path passes MSG_NOSIGNAL to send()). Reads write too: SSL_read answers a key update and sends an
// alert on a fatal error, such as the end of the stream after the replica link's shutdown(). SIGPIPE is
// blocked in this thread around every SSL call, and one it raised is taken back, so the process neither
// dies nor needs a process-wide SIG_IGN.
class SigpipeBlock {
 public:
  SigpipeBlock() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigemptyset(&pending);
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~SigpipeBlock() {
    if (!was_pending_) {
      sigset_t pending;
      sigemptyset(&pending);
      sigpending(&pending);
      if (sigismember(&pending, SIGPIPE) == 1) {
        const timespec zero{};
        while (sigtimedwait(&pipe_, nullptr, &zero) == -1 && errno == EINTR) {
        }
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  SigpipeBlock(const SigpipeBlock&) = delete;
  SigpipeBlock& operator=(const SigpipeBlock&) = delete;

 private:
  sigset_t pipe_{};
  sigset_t old_{};
  bool was_pending_ = false;
};

// OpenSSL's reason for a failed call, and what a user can do about it. Reads (and empties) this thread's
// error queue, so it must run right after the call that failed.
std::string tls_failure(SSL* ssl, int ssl_error, int saved_errno) {
  if (ssl_error == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
    return saved_errno != 0 ? std::strerror(saved_errno) : "the node closed the connection";
  const int reason = ERR_GET_REASON(ERR_peek_last_error());
  std::string text = tls_error_text("TLS failure");
  switch (reason) {
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
      text +=
          std::string(" (") + X509_verify_cert_error_string(SSL_get_verify_result(ssl)) +
          "): the node's certificate is not signed by a CA of --cacert/--cacertdir, or does not carry the "
          "name given with --sni";
      break;
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
      text += ": the node asks for a client certificate (give --cert and --key)";
      break;
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
      text +=
          ": the node refused this client's certificate (--cert): it is not signed by a CA the node trusts";
      break;
    case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE:
      text += ": the node refused the handshake (does it need a client certificate? give --cert and --key)";
      break;
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_PACKET_LENGTH_TOO_LONG:
    case SSL_R_HTTP_REQUEST:
      text += ": the node does not speak TLS on this port";
      break;
    default:
      break;
  }
  return text;
}

}  // namespace

struct Socket::Tls {
  SSL* ssl = nullptr;
  std::mutex mu;
  // After a fatal SSL error OpenSSL forbids any further call on it, SSL_shutdown included.
  bool failed = false;
  // An error met after some bytes of a read were already decrypted: those are returned first, the error
  // with the next read.
  std::string deferred_error;

  ~Tls() {
    if (ssl) SSL_free(ssl);
  }
};

Socket::Socket() = default;

Socket::~Socket() {
  close();
}

Socket::Socket(Socket&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      tls_(std::move(other.tls_)),
      peer_(std::move(other.peer_)),
      error_(std::move(other.error_)),
      reason_(std::move(other.reason_)) {}

Socket& Socket::operator=(Socket&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = std::exchange(other.fd_, -1);
    tls_ = std::move(other.tls_);
    peer_ = std::move(other.peer_);
    error_ = std::move(other.error_);
    reason_ = std::move(other.reason_);
  }
  return *this;
}

void Socket::close() {
  if (tls_) {
    if (!tls_->failed && fd_ >= 0) {
      // A close_notify, as a polite client sends; without waiting for the node's (it may never come).
      const SigpipeBlock block;
      SSL_shutdown(tls_->ssl);
      ERR_clear_error();
    }
    tls_.reset();
  }
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

bool Socket::fail(std::string message) {
  reason_ = std::move(message);
  error_ = peer_.str() + ": " + reason_;
  return false;
}

bool Socket::connect(const HostPort& node, Clock::time_point deadline, const TlsContext* tls) {
  close();
  peer_ = node;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(node.port);
  if (const int rc = getaddrinfo(node.host.c_str(), port.c_str(), &hints, &found); rc != 0)
    return fail(std::string("cannot resolve: ") + gai_strerror(rc));
  std::string last_error = "no address";
  for (addrinfo* a = found; a; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last_error = std::strerror(errno);
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0 || errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      const int ready = ::poll(&p, 1, ms_until(deadline));
      int err = 0;
      socklen_t len = sizeof err;
      if (ready == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
        fd_ = fd;
        freeaddrinfo(found);
        if (tls && !handshake(*tls, deadline)) {
          close();
          return false;
        }
        return true;
      }
      last_error = ready == 0 ? "connection timed out" : std::strerror(err ? err : errno);
    } else {
      last_error = std::strerror(errno);
    }
    ::close(fd);
  }
  freeaddrinfo(found);
  return fail(last_error);
}

bool Socket::handshake(const TlsContext& context, Clock::time_point deadline) {
  tls_ = std::make_unique<Tls>();
  ERR_clear_error();
  tls_->ssl = context.new_connection();
  if (!tls_->ssl || SSL_set_fd(tls_->ssl, fd_) != 1) {
    tls_->failed = true;
    return fail("TLS: " + tls_error_text("cannot create a TLS connection"));
  }
  for (;;) {
    const SigpipeBlock block;
    ERR_clear_error();
    const int rc = SSL_connect(tls_->ssl);
    if (rc == 1) return true;
    const int saved_errno = errno;
    const int err = SSL_get_error(tls_->ssl, rc);
    if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
      tls_->failed = true;
      return fail("TLS handshake failed: " + tls_failure(tls_->ssl, err, saved_errno));
    }
    const short revents = poll_fd(fd_, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline);
    // A plain Redis port reads the ClientHello as an inline command and waits for its end of line: the
    // handshake then stalls rather than fails. Say what that usually means.
    if (revents == 0) {
      tls_->failed = true;
      return fail("TLS handshake timed out: does the node speak TLS on this port?");
    }
  }
}

short Socket::wait(bool want_write, Clock::time_point deadline) {
  // Bytes OpenSSL has already decrypted are invisible to poll: report them as readable now.
  if (tls_) {
    std::lock_guard lock(tls_->mu);
    if (SSL_pending(tls_->ssl) > 0 || !tls_->deferred_error.empty()) return POLLIN;
  }
  // With TLS a write may also need the socket readable (and a read writable); POLLIN is always asked for,
  // and a caller that saw neither wanted event simply tries again.
  return poll_fd(fd_, static_cast<short>(POLLIN | (want_write ? POLLOUT : 0)), deadline);
}

long Socket::tls_write(std::string_view bytes, bool& want_read) {
  want_read = false;
  if (bytes.empty()) return 0;
  std::lock_guard lock(tls_->mu);
  if (tls_->failed) return fail("write failed: the TLS connection has failed"), -1;
  const SigpipeBlock block;
  ERR_clear_error();
  // The context allows partial writes: what SSL_write took is a prefix of `bytes`. A retry after WANT_* is
  // made with the same bytes (or more after them), as OpenSSL requires.
  const int n =
      SSL_write(tls_->ssl, bytes.data(), static_cast<int>(std::min<std::size_t>(bytes.size(), INT_MAX)));
  if (n > 0) return n;
  const int saved_errno = errno;
  const int err = SSL_get_error(tls_->ssl, n);
  if (err == SSL_ERROR_WANT_WRITE) return 0;
  if (err == SSL_ERROR_WANT_READ) {
    want_read = true;
    return 0;
  }
  std::string why = tls_failure(tls_->ssl, err, saved_errno);
  // A node that refuses this client's certificate says so in an alert and closes the connection; with TLS
  // 1.3 that comes after the handshake has completed on this side, so the first write may meet the reset
  // rather than the alert. The alert may still be waiting to be read: it is the reason worth showing.
  if (err == SSL_ERROR_SYSCALL) {
    ERR_clear_error();
    char byte = 0;
    const int got = SSL_read(tls_->ssl, &byte, 1);
    if (got <= 0 && SSL_get_error(tls_->ssl, got) == SSL_ERROR_SSL && ERR_peek_error() != 0)
      why = tls_failure(tls_->ssl, SSL_ERROR_SSL, 0);
    ERR_clear_error();
  }
  tls_->failed = true;
  fail("write failed: " + why);
  return -1;
}

long Socket::write_some(std::string_view bytes) {
  if (fd_ < 0) return fail("not connected"), -1;
  if (tls_) {
    bool want_read = false;
    return tls_write(bytes, want_read);
  }
  for (;;) {
    const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    fail(std::string("write failed: ") + std::strerror(errno));
    return -1;
  }
}

bool Socket::write_all(std::string_view bytes, Clock::time_point deadline) {
  if (fd_ < 0) return fail("not connected");
  while (!bytes.empty()) {
    bool want_read = false;
    const long n = tls_ ? tls_write(bytes, want_read) : write_some(bytes);
    if (n < 0) return false;
    bytes.remove_prefix(static_cast<std::size_t>(n));
    if (bytes.empty()) break;
    if (Clock::now() >= deadline) return fail("write timed out");
    // A TLS write that needs to read first (a renegotiation or key update from the node) waits for the
    // socket to be readable; another thread may be reading it meanwhile (the replica link's receiver), so
    // that wait is short and the write is simply tried again.
    const short revents =
        want_read ? poll_fd(fd_, POLLIN, std::min(deadline, Clock::now() + std::chrono::milliseconds(10)))
                  : poll_fd(fd_, POLLOUT, deadline);
    if (revents == 0 && !want_read) return fail("write timed out");
    if (revents & POLLNVAL) return fail("write failed: the connection is closed");
  }
  return true;
}

long Socket::tls_read(char* dst, std::size_t n, Clock::time_point deadline) {
  const int chunk = static_cast<int>(std::min<std::size_t>(n, INT_MAX));
  for (;;) {
    int err = SSL_ERROR_NONE;
    {
      std::lock_guard lock(tls_->mu);
      const SigpipeBlock block;
      if (!tls_->deferred_error.empty()) {
        fail(std::exchange(tls_->deferred_error, {}));
        return -1;
      }
      if (tls_->failed) return fail("read failed: the TLS connection has failed"), -1;
      // Everything that can be read without waiting, so that a caller gets whole batches (one SSL_read
      // returns at most one TLS record, 16 KB).
      long total = 0;
      for (;;) {
        ERR_clear_error();
        const int got = SSL_read(tls_->ssl, dst + total, chunk - static_cast<int>(total));
        if (got > 0) {
          total += got;
          if (total == chunk) return total;
          continue;
        }
        const int saved_errno = errno;
        err = SSL_get_error(tls_->ssl, got);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) break;
        tls_->failed = true;
        // The node closing its end: with a close_notify (ZERO_RETURN), or without one, as Redis does
        // (OpenSSL 3 calls that an unexpected EOF).
        const bool closed = err == SSL_ERROR_ZERO_RETURN ||
                            (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && saved_errno == 0) ||
                            (err == SSL_ERROR_SSL &&
                             ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING);
        std::string why = closed ? "connection closed by the server"
                                 : "read failed: " + tls_failure(tls_->ssl, err, saved_errno);
        ERR_clear_error();
        if (total > 0) {
          tls_->deferred_error = std::move(why);
          return total;
        }
        fail(std::move(why));
        return -1;
      }
      if (total > 0) return total;
    }
    const short revents = poll_fd(fd_, err == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN, deadline);
    if (revents == 0) {
      fail("read timed out");
      return 0;
    }
  }
}

long Socket::read_some(char* dst, std::size_t n, Clock::time_point deadline) {
  if (fd_ < 0) return fail("not connected"), -1;
  if (tls_) return tls_read(dst, n, deadline);
  for (;;) {
    const ssize_t got = ::recv(fd_, dst, n, 0);
    if (got > 0) return got;
    if (got == 0) return fail("connection closed by the server"), -1;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      fail(std::string("read failed: ") + std::strerror(errno));
      return -1;
    }
    pollfd p{fd_, POLLIN, 0};
    const int ready = ::poll(&p, 1, ms_until(deadline));
    if (ready == 0) {
      fail("read timed out");
      return 0;
    }
    if (ready < 0 && errno != EINTR) {
      fail(std::string("poll failed: ") + std::strerror(errno));
      return -1;
    }
  }
}

int Socket::local_port() const {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (fd_ < 0 || getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return 0;
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  return 0;
}

}  // namespace slotshift
