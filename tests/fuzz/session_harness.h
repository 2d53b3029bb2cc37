// The proxy's client session under fuzzing. One input is a few client connections' byte streams, written in
// chunks to an embedded slotshift-proxy (one worker, small limits) in front of the scripted cluster, whose
// nodes answer some commands with errors, late, huge, nested, torn or not at all, as the input says. Shared
// by the libFuzzer target (session_fuzz.cc) and the standalone driver (session_fuzz_main.cc), so that an
// input found by either replays on the other.
//
// Input layout:
//   byte 0     bits 0-1: client connections - 1. Bit 2: pause 0.2 ms after each of the first rounds of
//              writes, so that the proxy reads those chunks on their own. Bits 3-7: chunk sizes (0: a stream
//              in one write, 1: a byte at a time, n: 1 to 2^(n % 14 + 1) bytes, drawn from the input's hash).
//   byte 1     bits 0-2: R, the number of node rules. Bit 3: the last connection goes away as soon as it has
//              written its stream, replies unread (bit 4: with a TCP reset rather than a FIN).
//   R x 4      the rules: node, command, action, parameter (see rule_of in session_harness.cc).
//   the rest   the streams, separated by kStreamSeparator; piece i goes to connection i % connections.
//
// What is checked, for each input:
//   - every byte the proxy sends a client is valid RESP;
//   - each connection that stays gets exactly as many replies as its stream asks for (a reply per command up
//     to QUIT or the first protocol error, which get one each, after which the proxy closes), unless the
//     proxy closed it as a slow reader, or bytes followed the QUIT or the error (closing with input unread
//     makes the kernel reset the connection, which may discard replies on their way);
//   - afterwards, a fresh connection gets +PONG to PING within a deadline (a second one if the first could
//   not
//     connect or was reset before any reply);
//   - the process does not crash: the sanitizer builds abort on any report, and the driver's copy of the
//   proxy
//     is built with libstdc++'s assertions, which abort on an index out of range.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "proxy/config.h"
#include "tests/support/scripted_cluster.h"

namespace slotshift::fuzz {

inline constexpr std::string_view kStreamSeparator = "\n--\n";
inline constexpr int kMaxRules = 7;
inline constexpr int kRuleActions = 16;
// Commands a rule can name, by the input's byte modulo the count; "" is every command.
inline constexpr std::string_view kRuleCommands[] = {
    "",     "get",   "set",    "mget", "mset",   "del",  "exists", "incr", "exec",     "multi",
    "type", "blpop", "asking", "scan", "dbsize", "eval", "hset",   "keys", "flushall", "cluster"};

class SessionHarness {
 public:
  SessionHarness();
  ~SessionHarness();
  SessionHarness(const SessionHarness&) = delete;
  SessionHarness& operator=(const SessionHarness&) = delete;

  // Runs one input against a freshly started proxy; returns what went wrong, or "".
  std::string run(std::string_view input);

  const proxy::Config& config() const { return config_; }

 private:
  test::ScriptedCluster cluster_;
  std::array<std::unique_ptr<test::PortReservation>, 4> ports_;
  std::size_t runs_ = 0;
  proxy::Config config_;
};

}  // namespace slotshift::fuzz
