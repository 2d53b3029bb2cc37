#include "proxy/admin_questions.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/resp.h"
#include "proxy/fd_wait.h"

namespace slotshift::proxy {
namespace {

using Clock = std::chrono::steady_clock;

// Replies larger than this end the question (a node's CLUSTER NODES for a large cluster in the middle of a
// move is a few hundred KB).
constexpr std::size_t kMaxReplyBytes = 8u << 20;

// A non-blocking TCP connection to `node` (TCP_NODELAY), made before `deadline`; -1 and why not.
int connect_to(const HostPort& node, Clock::time_point deadline, std::string& why) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(node.port);
  if (const int rc = ::getaddrinfo(node.host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    why = std::string("cannot resolve: ") + ::gai_strerror(rc);
    return -1;
  }
  int fd = -1;
  why = "no address";
  for (addrinfo* a = found; a && fd < 0; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      why = std::strerror(errno);
      continue;
    }
    int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      int error = ETIMEDOUT;
      socklen_t len = sizeof error;
      if (wait_until_ready(fd, POLLOUT, deadline)) ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len);
      rc = error == 0 ? 0 : -1;
      errno = error;
    }
    if (rc != 0) {
      why = errno == ETIMEDOUT ? "connect timed out" : std::string("connect: ") + std::strerror(errno);
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(found);
  if (fd >= 0) {
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  return fd;
}

enum class Outcome { kAnswered, kFailedBeforeReply, kFailed };

// Writes `wire` on `fd` and reads `replies` replies: their bytes in `out`. kFailedBeforeReply when the
// connection failed before any byte came back (a kept connection the node had closed).
Outcome exchange(int fd, const std::string& wire, int replies, Clock::time_point deadline, std::string& out,
                 std::string& why) {
  std::size_t sent = 0;
  while (sent < wire.size()) {
    const ssize_t n = ::send(fd, wire.data() + sent, wire.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (wait_until_ready(fd, POLLOUT, deadline)) continue;
      why = "no reply in time";
      return Outcome::kFailed;
    }
    why = std::string("write: ") + std::strerror(errno);
    return Outcome::kFailedBeforeReply;
  }
  out.clear();
  std::size_t parsed = 0;  // bytes of whole replies
  int complete = 0;
  char buffer[16384];
  while (complete < replies) {
    resp::Value value;
    std::size_t consumed = 0;
    std::string error;
    const auto status = parsed < out.size()
                            ? resp::parse_reply(std::string_view(out).substr(parsed), value, consumed, &error)
                            : resp::Status::kIncomplete;
    if (status == resp::Status::kComplete) {
      parsed += consumed;
      ++complete;
      continue;
    }
    if (status == resp::Status::kError) {
      why = "a reply that is not RESP: " + error;
      return Outcome::kFailed;
    }
    if (!wait_until_ready(fd, POLLIN, deadline)) {
      why = "no reply in time";
      return Outcome::kFailed;
    }
    const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) {
      why = n == 0 ? "the node closed the connection" : std::string("read: ") + std::strerror(errno);
      return out.empty() ? Outcome::kFailedBeforeReply : Outcome::kFailed;
    }
    out.append(buffer, static_cast<std::size_t>(n));
    if (out.size() > kMaxReplyBytes) {
      why = "a reply of more than " + std::to_string(kMaxReplyBytes) + " bytes";
      return Outcome::kFailed;
    }
  }
  // Bytes past the replies asked for: the connection's order of replies is lost, it is not kept.
  if (parsed != out.size()) {
    why = "more bytes than the replies asked for";
    return Outcome::kFailed;
  }
  return Outcome::kAnswered;
}

}  // namespace

AdminQuestions::~AdminQuestions() {
  for (const Kept& k : idle_)
    ::close(k.fd);
}

std::size_t AdminQuestions::kept() const {
  std::lock_guard lock(mutex_);
  return idle_.size();
}

int AdminQuestions::take(const std::string& key) {
  std::lock_guard lock(mutex_);
  const auto it = std::find_if(idle_.begin(), idle_.end(), [&key](const Kept& k) { return k.key == key; });
  if (it == idle_.end()) return -1;
  const int fd = it->fd;
  idle_.erase(it);
  return fd;
}

void AdminQuestions::give_back(std::string key, int fd) {
  std::lock_guard lock(mutex_);
  idle_.push_back({std::move(key), fd, ++uses_});
  while (idle_.size() > kMaxKept) {
    const auto oldest = std::min_element(idle_.begin(), idle_.end(),
                                         [](const Kept& a, const Kept& b) { return a.used < b.used; });
    ::close(oldest->fd);
    idle_.erase(oldest);
  }
}

std::optional<std::string> AdminQuestions::ask(const HostPort& node, const std::string& command, int replies,
                                               const LoginPtr& login,
                                               std::chrono::steady_clock::time_point deadline,
                                               std::string& why) {
  const std::string key = connection_key(login, node);
  // A new connection logs in first, in the same write: a question behind a refused AUTH is not asked.
  for (int attempt = 0; attempt < 2; ++attempt) {
    int fd = attempt == 0 ? take(key) : -1;
    const bool reused = fd >= 0;
    const bool auth = !reused && login;
    if (!reused && (fd = connect_to(node, deadline, why)) < 0) return std::nullopt;
    const std::string wire = auth ? auth_command(*login) + command : command;
    std::string out;
    const Outcome outcome = exchange(fd, wire, replies + (auth ? 1 : 0), deadline, out, why);
    if (outcome != Outcome::kAnswered) {
      ::close(fd);
      if (outcome == Outcome::kFailedBeforeReply && reused) continue;
      return std::nullopt;
    }
    if (auth) {
      resp::Value first;
      std::size_t consumed = 0;
      resp::parse_reply(out, first, consumed);
      if (first.type != resp::Type::kSimpleString) {
        ::close(fd);
        why = "the node refused the proxy's login: " + first.str;
        return std::nullopt;
      }
      out.erase(0, consumed);
    }
    give_back(key, fd);
    return out;
  }
  return std::nullopt;
}

}  // namespace slotshift::proxy
