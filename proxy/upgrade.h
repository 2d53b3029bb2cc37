// A binary upgrade without dropping a client: the running proxy hands its listening sockets to its successor
// over a unix socket (--upgrade-socket PATH, SCM_RIGHTS), so that not one connection waiting in their backlog
// is refused; once the successor serves, the old process drains (SIGTERM's path) and exits.
//
//   successor -> running:  "TAKEOVER <listen address>\n"
//   running -> successor:  "LISTEN <n>\n" with the n listening sockets attached, or "REFUSED <why>\n"
//   successor -> running:  "READY\n" once its workers accept on them
//   running -> successor:  "BYE\n"; the running process then stops answering at PATH and drains
//
// Every step has a deadline. Only a process of the same user may connect (the socket file is 0600 and the
// peer's credentials are checked). A successor that fails before READY leaves the running process as it was.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace slotshift::proxy {

// The running side: answers successors at `path` from a thread of its own.
class UpgradeListener {
 public:
  // `sockets` are duplicated: the listener's copies stay valid whatever the workers do with theirs, until
  // close_sockets(). `handed_over` runs (on the listener's thread) once a successor serves.
  static std::unique_ptr<UpgradeListener> start(const std::string& path, const std::vector<int>& sockets,
                                                std::string listen_address,
                                                std::function<void(pid_t successor)> handed_over,
                                                std::string& error);
  ~UpgradeListener();
  UpgradeListener(const UpgradeListener&) = delete;
  UpgradeListener& operator=(const UpgradeListener&) = delete;

  // No successor may take the sockets from now on (the process drains: its own listeners are closed, and
  // copies kept here would leave the port taking connections that nobody accepts).
  void close_sockets();

 private:
  UpgradeListener() = default;
  void run();
  void serve(int connection);

  std::string path_;
  std::string listen_address_;
  std::function<void(pid_t)> handed_over_;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};  // a pipe: written to stop the thread
  std::mutex mutex_;        // guards sockets_ (close_sockets() runs on the main thread)
  std::vector<int> sockets_;
  std::thread thread_;
};

// The successor's side, before its workers start. A running proxy at `path`: its listening sockets, and the
// connection to tell it READY on. No one at `path` (no file, or no process behind it): `found` is false, and
// the caller binds its own sockets. Anything else (a refusal, a deadline) is an error.
struct TakeOver {
  bool found = false;
  std::vector<int> sockets;
  pid_t from = 0;
  int channel = -1;
};
TakeOver take_over(const std::string& path, const std::string& listen_address, std::string& error);
// Tells the predecessor that this process accepts on the sockets now, and waits (within a deadline) for it to
// let go of `path`; then `path` is free for this process's own UpgradeListener. Returns what to log.
std::string confirm_take_over(TakeOver& taken);

}  // namespace slotshift::proxy
