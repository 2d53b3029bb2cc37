#include "proxy/admin_http.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <utility>

#include "proxy/fd_wait.h"

namespace slotshift::proxy {
namespace {

using Clock = std::chrono::steady_clock;

void address_of(int fd, bool peer, std::string& ip, int& port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  auto* sa = reinterpret_cast<sockaddr*>(&addr);
  if ((peer ? ::getpeername(fd, sa, &len) : ::getsockname(fd, sa, &len)) != 0) return;
  char host[NI_MAXHOST] = {};
  char service[NI_MAXSERV] = {};
  if (::getnameinfo(sa, len, host, sizeof host, service, sizeof service, NI_NUMERICHOST | NI_NUMERICSERV) !=
      0)
    return;
  ip = host;
  port = std::atoi(service);
}

// One connection as cpp-httplib reads and writes it: a socket, a read buffer, and the current request's
// budget and deadline.
class Connection final : public httplib::Stream {
 public:
  Connection(int fd, const AdminHttpLimits& limits) : fd_(fd), limits_(limits) {}

  // A request starts: the budget is whole again, and the deadline runs from now.
  void start_request() {
    consumed_ = 0;
    deadline_ = Clock::now() + limits_.request_time;
  }
  // Bytes of the current request handed to cpp-httplib.
  std::size_t consumed() const { return consumed_; }
  bool buffered() const { return begin_ < end_; }

  bool is_readable() const override { return buffered() || wait_until_ready(fd_, POLLIN, deadline_); }
  bool is_writable() const override {
    return out_.size() < kOutBytes || wait_until_ready(fd_, POLLOUT, Clock::now() + limits_.write_time);
  }

  ssize_t read(char* ptr, size_t size) override {
    if (consumed_ >= limits_.request_bytes) return -1;
    if (!buffered()) {
      // What is there already is read without a wait (the request that woke wait_for_request is): on a
      // fleet's shared cores each system call of a control call counts, in every proxy.
      ssize_t n = ::recv(fd_, buffer_, sizeof buffer_, MSG_DONTWAIT);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        if (!wait_until_ready(fd_, POLLIN, deadline_)) return -1;
        n = ::recv(fd_, buffer_, sizeof buffer_, 0);
      }
      if (n <= 0) return n;
      begin_ = 0;
      end_ = static_cast<std::size_t>(n);
    }
    const std::size_t n = std::min({size, end_ - begin_, limits_.request_bytes - consumed_});
    std::memcpy(ptr, buffer_ + begin_, n);
    begin_ += n;
    consumed_ += n;
    return static_cast<ssize_t>(n);
  }

  // cpp-httplib writes a reply's headers and its body in two writes: kept here up to kOutBytes and sent as
  // one by flush() once the reply is whole, one packet where there were two (and one wake-up of the caller,
  // where there could be two, in every proxy of a fleet at every control call).
  ssize_t write(const char* ptr, size_t size) override {
    if (out_.size() + size <= kOutBytes) {
      out_.append(ptr, size);
      return static_cast<ssize_t>(size);
    }
    if (!flush()) return -1;
    return send_some(ptr, size);
  }
  // Sends what write() kept; false when the connection failed or a write made no progress within
  // write_time.
  bool flush() {
    std::size_t sent = 0;
    while (sent < out_.size()) {
      const ssize_t n = send_some(out_.data() + sent, out_.size() - sent);
      if (n < 0) return false;
      sent += static_cast<std::size_t>(n);
    }
    out_.clear();
    return true;
  }

  // Asked by cpp-httplib at every request: looked up once per connection.
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    if (!remote_) remote_ = looked_up(true);
    ip = remote_->first;
    port = remote_->second;
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    if (!local_) local_ = looked_up(false);
    ip = local_->first;
    port = local_->second;
  }
  socket_t socket() const override { return fd_; }

 private:
  int fd_;
  const AdminHttpLimits& limits_;
  char buffer_[4096];
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
  std::size_t consumed_ = 0;
  Clock::time_point deadline_;
  mutable std::optional<std::pair<std::string, int>> remote_, local_;
  static constexpr std::size_t kOutBytes = 64 * 1024;
  std::string out_;

  // A reply fits the socket's buffer: sent at once, and only a full buffer waits (write_time).
  ssize_t send_some(const char* ptr, std::size_t size) const {
    const ssize_t n = ::send(fd_, ptr, size, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return n;
    if (!wait_until_ready(fd_, POLLOUT, Clock::now() + limits_.write_time)) return -1;
    return ::send(fd_, ptr, size, MSG_NOSIGNAL);
  }

  std::pair<std::string, int> looked_up(bool peer) const {
    std::pair<std::string, int> out{std::string(), 0};
    address_of(fd_, peer, out.first, out.second);
    return out;
  }
};

}  // namespace

std::optional<std::uint64_t> content_length(const httplib::Request& req) {
  if (!req.has_header("Content-Length")) return 0;
  const std::string text = req.get_header_value("Content-Length");
  std::uint64_t n = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return n;
}

AdminHttpServer::AdminHttpServer(const AdminHttpLimits& limits)
    : limits_(limits), stop_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

AdminHttpServer::~AdminHttpServer() {
  if (stop_fd_ >= 0) ::close(stop_fd_);
}

void AdminHttpServer::end_idle_waits() {
  // Never read back: the count stays above zero, so every wait, now or later, sees it.
  const std::uint64_t one = 1;
  if (stop_fd_ >= 0) (void)!::write(stop_fd_, &one, sizeof one);
}

bool AdminHttpServer::wait_for_request(socket_t sock) const {
  const auto deadline = Clock::now() + limits_.idle;
  pollfd fds[2] = {{sock, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
  // Without an eventfd (none could be made) a stopping server's idle connections end at their idle limit.
  const nfds_t count = stop_fd_ >= 0 ? 2 : 1;
  while (svr_sock_ != INVALID_SOCKET) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    fds[0].revents = fds[1].revents = 0;
    const int n = ::poll(fds, count, static_cast<int>(left));
    if (n < 0 && errno != EINTR) return false;
    if (fds[1].revents != 0) return false;
    if (fds[0].revents != 0)
      return true;  // a request, a hang-up or an error: the read that follows says which
  }
  return false;
}

bool AdminHttpServer::process_and_close_socket(socket_t sock) {
  // cpp-httplib writes a reply's headers and its body in two writes. With Nagle's algorithm on, the body
  // waits until the client acknowledges the headers, and a client that delays its ACK (Linux does, by up to
  // 40 ms, once a connection is past its first exchanges) makes every reply on a kept connection take 40 ms:
  // at a cutover, that is the proxies' hold and handoff, each. The replies are small and complete: send each
  // write at once.
  const int one = 1;
  ::setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  Connection connection(sock, limits_);
  bool ok = true;
  for (std::size_t served = 0; served < limits_.requests_per_connection; ++served) {
    if (!connection.buffered() && !wait_for_request(sock)) break;
    connection.start_request();
    bool reached = false;  // set once the headers are in, before the handlers run
    bool unframed = false;
    std::size_t body_at = 0;
    std::uint64_t body_length = 0;
    bool closed = false;
    const bool last = served + 1 == limits_.requests_per_connection;
    ok = process_request(connection, last, closed, [&](httplib::Request& req) {
      reached = true;
      body_at = connection.consumed();
      const auto length = content_length(req);
      unframed = !length || req.has_header("Transfer-Encoding");
      body_length = length.value_or(0);
    });
    if (!connection.flush()) break;
    // A body that was not read (its request refused on the headers) must not be read as the next request.
    if (!ok || closed || !reached || unframed || connection.consumed() - body_at < body_length) break;
  }
  ::shutdown(sock, SHUT_RDWR);
  ::close(sock);
  return ok;
}

}  // namespace slotshift::proxy
