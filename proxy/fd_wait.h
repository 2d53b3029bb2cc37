// Waiting for a blocking descriptor with a deadline, for the proxy's code outside the workers' loops (the
// admin endpoint's connections and questions, a binary upgrade's hand-over).
#pragma once

#include <poll.h>

#include <cerrno>
#include <chrono>
#include <cstdint>

namespace slotshift::proxy {

// Waits until `fd` is ready for `events` (or hung up or failed: the call that follows says which) or
// `deadline` passes; false then, or on a poll error.
inline bool wait_until_ready(int fd, short events, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    // At most a minute per poll: the deadline is looked at again after it.
    const int n = ::poll(&p, 1, static_cast<int>(left < 60000 ? left : 60000));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

}  // namespace slotshift::proxy
