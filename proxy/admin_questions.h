// The admin endpoint's own questions to nodes, asked on the admin thread that serves the control call, on
// blocking connections of its own: what a handoff's route check asks (route_check.h) without a worker's loop.
//
// Why not a worker's connection (node_questions.h), as a ROUTE asks: in a fleet of proxies sharing cores, a
// control call costs the fleet mostly its wake-ups, and a question on a worker's loop wakes the worker twice
// and the admin thread once more, where this one wakes the admin thread once, for the reply.
//
// What is kept, and what is not (as node_questions.h):
//   - at most kMaxKept idle connections for the whole process, the least recently used closed first; a
//     connection in use belongs to the one thread asking on it, and two questions at once use two;
//   - connections by (login, node): a rotated password makes a new key, and the old connections are never
//     used again (they leave as the least recently used);
//   - never an answer: each question is sent again, and its reply read from the connection it was sent on;
//   - a question that fails on a kept connection before any byte of its reply (the node closed it meanwhile)
//     is asked once more on a new one.
//
// Plain TCP only: with TLS toward the cluster the questions go through a worker, which has the TLS session
// machinery (available() says which).
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/host_port.h"
#include "proxy/login.h"

namespace slotshift::proxy {

class AdminQuestions {
 public:
  static constexpr std::size_t kMaxKept = 8;

  AdminQuestions() = default;
  ~AdminQuestions();
  AdminQuestions(const AdminQuestions&) = delete;
  AdminQuestions& operator=(const AdminQuestions&) = delete;

  // Sends `command` (the wire bytes of `replies` commands) to `node`, logged in as `login` (null: no AUTH),
  // and waits until `deadline` for the replies: their bytes one after the other, or nullopt and why.
  std::optional<std::string> ask(const HostPort& node, const std::string& command, int replies,
                                 const LoginPtr& login, std::chrono::steady_clock::time_point deadline,
                                 std::string& why);
  // Idle connections kept now (for tests).
  std::size_t kept() const;

 private:
  struct Kept {
    std::string key;
    int fd = -1;
    std::uint64_t used = 0;
  };
  // A kept connection for `key` (taken out of the pool), or -1.
  int take(const std::string& key);
  void give_back(std::string key, int fd);

  mutable std::mutex mutex_;
  std::vector<Kept> idle_;
  std::uint64_t uses_ = 0;
};

}  // namespace slotshift::proxy
