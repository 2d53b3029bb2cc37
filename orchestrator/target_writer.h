// A pipelined connection into the target of a move. Operations (each one or more commands, e.g. ASKING +
// RESTORE, or ASKING + MULTI ... EXEC) are written without waiting for their replies, up to a window of
// operations and bytes in flight, and their replies are matched in order. Each operation ends with one
// outcome: success, or the first error among its replies (an EXEC's array is looked into).
//
// The window is what keeps the target busy and the orchestrator's memory bounded: submit() pumps the
// connection (writes what fits, reads what arrived) until the operation fits in the window.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <string_view>

#include "common/host_port.h"
#include "common/resp.h"
#include "orchestrator/node_client.h"
#include "orchestrator/socket.h"

namespace slotshift {

struct TargetWriterOptions {
  HostPort target;
  Credentials credentials;
  std::size_t max_ops_in_flight = 2048;
  std::size_t max_bytes_in_flight = 8u << 20;
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds reply_timeout{30000};  // no reply at all for this long with work in flight: fail
};

class TargetWriter {
 public:
  // Called once per operation, in submission order; `error` is empty on success. It runs inside submit(),
  // drain() or poll() and must not call them.
  using Done = std::function<void(std::uint64_t tag, std::string_view error)>;

  bool connect(const TargetWriterOptions& options, Done done);
  // Queues one operation of `replies` replies. False (error()) when the connection failed.
  bool submit(std::string_view wire, std::uint32_t replies, std::uint64_t tag);
  // Waits until every submitted operation has its outcome.
  bool drain();
  // Writes and reads what can be done now, without waiting.
  bool poll() { return pump(false); }
  void close() { socket_.close(); }

  std::size_t ops_in_flight() const { return inflight_.size(); }
  std::uint64_t bytes_written() const { return bytes_written_; }
  const std::string& error() const { return error_; }

 private:
  struct Pending {
    std::uint64_t tag;
    std::uint32_t replies_left;
    std::size_t bytes;
    std::string error;
  };
  // One round of I/O: write what the socket takes, read and match what arrived. Waits (up to the reply
  // timeout) only when nothing could be done at once.
  bool pump(bool wait);
  bool on_reply(std::string_view message);
  bool fail(std::string message);

  TargetWriterOptions options_;
  Done done_;
  Socket socket_;
  std::string out_;  // bytes not yet written
  std::size_t out_offset_ = 0;
  std::string in_;  // bytes read and not yet matched
  std::size_t in_offset_ = 0;
  resp::Scanner scanner_{resp::Scanner::Mode::kReply};
  std::deque<Pending> inflight_;
  std::size_t inflight_bytes_ = 0;
  std::uint64_t bytes_written_ = 0;
  Clock::time_point last_progress_{};
  std::string error_;
  std::vector<std::string_view> elements_;
};

}  // namespace slotshift
