#include "proxy/upgrade.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "proxy/fd_wait.h"
#include "proxy/log.h"

namespace slotshift::proxy {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kStepTime = std::chrono::seconds(5);  // each exchange of the handover
constexpr std::size_t kMaxLine = 1024;
constexpr std::size_t kMaxSockets = 256;  // one per worker: --threads is at most 256

bool fill_address(const std::string& path, sockaddr_un& addr, std::string& error) {
  addr = sockaddr_un{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    error = "--upgrade-socket: '" + path + "' is not a usable unix socket path (at most " +
            std::to_string(sizeof addr.sun_path - 1) + " bytes)";
    return false;
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return true;
}

bool send_text(int fd, const std::string& text, Clock::time_point deadline) {
  std::size_t sent = 0;
  while (sent < text.size()) {
    if (!wait_until_ready(fd, POLLOUT, deadline)) return false;
    const ssize_t n = ::send(fd, text.data() + sent, text.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) return false;
    sent += static_cast<std::size_t>(n);
  }
  return true;
}

// One line (without its newline), and the descriptors that came with its bytes. Reads one byte at a time
// after the first message, so that nothing past the line is taken from the stream.
bool receive_line(int fd, std::string& line, std::vector<int>* sockets, Clock::time_point deadline) {
  line.clear();
  while (line.size() < kMaxLine) {
    if (!wait_until_ready(fd, POLLIN, deadline)) return false;
    char byte = 0;
    iovec io{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxSockets)];
    msghdr msg{};
    msg.msg_iov = &io;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) return false;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int received = -1;
        std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        // Descriptors nobody asked for are not kept.
        if (sockets) {
          sockets->push_back(received);
        } else {
          ::close(received);
        }
      }
    }
    if (byte == '\n') return true;
    line += byte;
  }
  return false;
}

// The line and the sockets in one message: they arrive together or not at all.
bool send_sockets(int fd, const std::string& line, const std::vector<int>& sockets,
                  Clock::time_point deadline) {
  if (!wait_until_ready(fd, POLLOUT, deadline)) return false;
  iovec io{const_cast<char*>(line.data()), line.size()};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * sockets.size()));
  msghdr msg{};
  msg.msg_iov = &io;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * sockets.size());
  std::memcpy(CMSG_DATA(c), sockets.data(), sizeof(int) * sockets.size());
  const ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
  // A line this short goes whole into an empty unix socket, or not at all.
  return n == static_cast<ssize_t>(line.size());
}

// The peer runs as this process's user; its pid, or 0 when it does not.
pid_t same_user_peer(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.uid != ::getuid()) return 0;
  return cred.pid;
}

}  // namespace

std::unique_ptr<UpgradeListener> UpgradeListener::start(const std::string& path,
                                                        const std::vector<int>& sockets,
                                                        std::string listen_address,
                                                        std::function<void(pid_t)> handed_over,
                                                        std::string& error) {
  sockaddr_un addr{};
  if (!fill_address(path, addr, error)) return nullptr;
  std::unique_ptr<UpgradeListener> self(new UpgradeListener());
  self->path_ = path;
  self->listen_address_ = std::move(listen_address);
  self->handed_over_ = std::move(handed_over);
  self->listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (self->listen_fd_ < 0 || ::pipe2(self->wake_, O_CLOEXEC) != 0) {
    error = std::string("--upgrade-socket: ") + std::strerror(errno);
    return nullptr;
  }
  // A file left by a process that is gone (take_over() found no one behind it) is replaced.
  ::unlink(path.c_str());
  // Created 0600: only this user's processes may take the sockets.
  const mode_t old_mask = ::umask(077);
  const int bound = ::bind(self->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  const int bind_errno = errno;
  ::umask(old_mask);
  if (bound != 0 || ::listen(self->listen_fd_, 4) != 0) {
    error =
        "--upgrade-socket: cannot listen on " + path + ": " + std::strerror(bound != 0 ? bind_errno : errno);
    return nullptr;
  }
  for (int s : sockets) {
    const int copy = ::fcntl(s, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) {
      error = std::string("--upgrade-socket: dup: ") + std::strerror(errno);
      return nullptr;
    }
    self->sockets_.push_back(copy);
  }
  self->thread_ = std::thread([raw = self.get()] { raw->run(); });
  return self;
}

UpgradeListener::~UpgradeListener() {
  if (wake_[1] >= 0) {
    const char byte = 0;
    [[maybe_unused]] const ssize_t n = ::write(wake_[1], &byte, 1);
  }
  if (thread_.joinable()) thread_.join();
  close_sockets();
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
    ::unlink(path_.c_str());
  }
  for (int fd : wake_)
    if (fd >= 0) ::close(fd);
}

void UpgradeListener::close_sockets() {
  std::lock_guard lock(mutex_);
  for (int s : sockets_)
    ::close(s);
  sockets_.clear();
}

void UpgradeListener::run() {
  for (;;) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (p[1].revents) return;
    const int connection = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (connection < 0) continue;
    serve(connection);
    ::close(connection);
    if (listen_fd_ < 0) return;  // handed over
  }
}

void UpgradeListener::serve(int connection) {
  const pid_t successor = same_user_peer(connection);
  if (successor == 0) {
    log_line(LogLevel::kWarning, "upgrade: refused a connection at %s from another user", path_.c_str());
    return;
  }
  const auto deadline = Clock::now() + kStepTime;
  std::string line;
  if (!receive_line(connection, line, nullptr, deadline)) return;
  const std::string want = "TAKEOVER ";
  std::string refusal;
  {
    std::lock_guard lock(mutex_);
    if (line.rfind(want, 0) != 0) {
      refusal = "expected TAKEOVER <listen address>";
    } else if (line.substr(want.size()) != listen_address_) {
      refusal = "this proxy listens on " + listen_address_ + ", not " + line.substr(want.size());
    } else if (sockets_.empty()) {
      refusal = "this proxy is stopping: its listening sockets are closed";
    } else if (!send_sockets(connection, "LISTEN " + std::to_string(sockets_.size()) + "\n", sockets_,
                             deadline)) {
      return;
    }
  }
  if (!refusal.empty()) {
    send_text(connection, "REFUSED " + refusal + "\n", deadline);
    log_line(LogLevel::kWarning, "upgrade: refused pid %d: %s", static_cast<int>(successor), refusal.c_str());
    return;
  }
  // The successor starts its workers on them: until it says so, this process serves as before, and it goes on
  // if the successor fails.
  if (!receive_line(connection, line, nullptr, Clock::now() + kStepTime) || line != "READY") {
    log_line(LogLevel::kWarning,
             "upgrade: pid %d took the listening sockets but did not say it serves; this process goes on",
             static_cast<int>(successor));
    return;
  }
  // The path is the successor's from now on: it binds its own listener there once told BYE.
  ::close(listen_fd_);
  listen_fd_ = -1;
  send_text(connection, "BYE\n", Clock::now() + kStepTime);
  close_sockets();
  handed_over_(successor);
}

TakeOver take_over(const std::string& path, const std::string& listen_address, std::string& error) {
  TakeOver taken;
  sockaddr_un addr{};
  if (!fill_address(path, addr, error)) return taken;
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    error = std::string("--upgrade-socket: ") + std::strerror(errno);
    return taken;
  }
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    const int why = errno;
    ::close(fd);
    // No file, or a file that no process listens behind (one that stopped): there is nothing to take over.
    if (why == ENOENT || why == ECONNREFUSED) return taken;
    error = "--upgrade-socket: cannot connect to " + path + ": " + std::strerror(why);
    return taken;
  }
  const auto deadline = Clock::now() + kStepTime;
  taken.from = same_user_peer(fd);
  std::string line;
  std::vector<int> sockets;
  if (taken.from == 0) {
    error = "--upgrade-socket: the process at " + path + " runs as another user";
  } else if (!send_text(fd, "TAKEOVER " + listen_address + "\n", deadline) ||
             !receive_line(fd, line, &sockets, deadline)) {
    error = "--upgrade-socket: the proxy at " + path + " (pid " + std::to_string(taken.from) +
            ") did not hand over its listening sockets within " + std::to_string(kStepTime.count()) + " s";
  } else if (line.rfind("REFUSED ", 0) == 0) {
    error = "--upgrade-socket: the proxy at " + path + " (pid " + std::to_string(taken.from) +
            ") refused: " + line.substr(8);
  } else if (line != "LISTEN " + std::to_string(sockets.size()) || sockets.empty()) {
    error = "--upgrade-socket: the proxy at " + path + " sent '" + line + "' with " +
            std::to_string(sockets.size()) + " socket(s)";
  }
  if (!error.empty()) {
    for (int s : sockets)
      ::close(s);
    ::close(fd);
    return taken;
  }
  taken.found = true;
  taken.sockets = std::move(sockets);
  taken.channel = fd;
  return taken;
}

std::string confirm_take_over(TakeOver& taken) {
  std::string line;
  const auto deadline = Clock::now() + kStepTime;
  const bool bye = send_text(taken.channel, "READY\n", deadline) &&
                   receive_line(taken.channel, line, nullptr, deadline) && line == "BYE";
  ::close(taken.channel);
  taken.channel = -1;
  const std::string what = "took over " + std::to_string(taken.sockets.size()) +
                           " listening socket(s) from pid " + std::to_string(taken.from);
  return bye ? what + ", which now drains" : what + ", which did not confirm (it may have stopped meanwhile)";
}

}  // namespace slotshift::proxy
