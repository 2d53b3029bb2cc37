#include "orchestrator/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace slotshift {
namespace {

int ms_until(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(std::min<long long>(left + 1, 1 << 30));
}

}  // namespace

Socket::~Socket() {
  close();
}

Socket::Socket(Socket&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), peer_(std::move(other.peer_)), error_(std::move(other.error_)) {}

Socket& Socket::operator=(Socket&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = std::exchange(other.fd_, -1);
    peer_ = std::move(other.peer_);
    error_ = std::move(other.error_);
  }
  return *this;
}

void Socket::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

bool Socket::fail(std::string message) {
  error_ = peer_.str() + ": " + std::move(message);
  return false;
}

bool Socket::connect(const HostPort& node, Clock::time_point deadline) {
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

short Socket::wait(bool want_write, Clock::time_point deadline) {
  pollfd p{fd_, static_cast<short>(POLLIN | (want_write ? POLLOUT : 0)), 0};
  for (;;) {
    const int ready = ::poll(&p, 1, ms_until(deadline));
    if (ready > 0) return p.revents;
    if (ready == 0) return 0;
    if (errno != EINTR) return POLLERR;
  }
}

long Socket::write_some(std::string_view bytes) {
  if (fd_ < 0) return fail("not connected"), -1;
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
  while (!bytes.empty()) {
    const long n = write_some(bytes);
    if (n < 0) return false;
    bytes.remove_prefix(static_cast<std::size_t>(n));
    if (bytes.empty()) break;
    pollfd p{fd_, POLLOUT, 0};
    const int ready = ::poll(&p, 1, ms_until(deadline));
    if (ready == 0) return fail("write timed out");
    if (ready < 0 && errno != EINTR) return fail(std::string("poll failed: ") + std::strerror(errno));
  }
  return true;
}

long Socket::read_some(char* dst, std::size_t n, Clock::time_point deadline) {
  if (fd_ < 0) return fail("not connected"), -1;
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
