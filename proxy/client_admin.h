// CLIENT LIST and CLIENT KILL over the proxy's own clients, as one Redis answers them about its own. Clients
// live on every worker's thread, each session touched by its worker only: the question goes to every worker
// (Worker::post), each answers about its own sessions on its own thread, and the answers come back to the
// asking client's worker, which replies once all are in, or with an error at the request's deadline. Nothing
// is added to the path of other commands: no registry, no lock.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/request.h"

namespace slotshift::proxy {

class Session;
class Worker;

class ClientAdmin {
 public:
  // Who a CLIENT LIST or CLIENT KILL is about, read as Redis 7 reads it.
  struct Filter {
    enum class Type : std::uint8_t { kAny, kNormal, kPubSub, kNone /* master, replica: none of ours */ };
    std::vector<std::uint64_t> ids;  // LIST ID ..., KILL ID (one)
    bool by_id = false;
    std::optional<std::string> addr, laddr, user;
    Type type = Type::kAny;
    bool skipme = true;
    std::uint64_t maxage_s = 0;  // 0: any age
    bool old_form = false;       // CLIENT KILL addr:port: +OK or "No such client", and may kill the caller
  };

  // CLIENT LIST or CLIENT KILL from `session` (args from "CLIENT"): answered in the client's order.
  static void command(Session& session, std::span<const std::string_view> args, bool kill);

  // The line CLIENT LIST and CLIENT INFO give for `session`, in Redis's format, with the proxy's values.
  static std::string line(const Session& session, std::uint64_t now_ms);

  // Parsing, for the tests: "" or the error reply Redis gives for the same arguments.
  static std::string parse_list(std::span<const std::string_view> args, Filter& out);
  static std::string parse_kill(std::span<const std::string_view> args, bool users_known, Filter& out);

 private:
  static bool matches(const Session& session, const Filter& filter, std::uint64_t now_ms);
  static std::string user_of(const Session& session);
};

}  // namespace slotshift::proxy
