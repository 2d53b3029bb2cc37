// One client command on its way through the proxy, and the parts a split or fanned-out command becomes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/command_table.h"
#include "common/slot.h"
#include "proxy/login.h"

namespace slotshift::proxy {

class Session;
class Backend;
struct Request;
using RequestPtr = std::shared_ptr<Request>;

// How the replies of a request's parts become the client's reply.
enum class Merge : std::uint8_t {
  kNone,          // not split
  kArrayByIndex,  // MGET: each part's array elements go back to the client's key positions
  kSumIntegers,   // DEL, UNLINK, EXISTS, TOUCH, DBSIZE
  kAllOk,         // MSET, FLUSHALL, SCRIPT FLUSH: +OK when every part says so, else the first error
  kConcatArrays,  // KEYS
  kUnionArrays,   // PUBSUB CHANNELS, SHARDCHANNELS: each name once
  kSumPairs,      // PUBSUB NUMSUB, SHARDNUMSUB: name, count, ... with the counts summed by name
  kFirstReply,    // SCRIPT LOAD: every master answers the same
  kArrayMin,      // SCRIPT EXISTS: 1 only where every master has it
  kScanCursor,    // SCAN: one master's reply, its cursor rewritten to carry where the walk is (scan_cursor.h)
  kInfo,          // INFO: every master's sections merged, with the proxy's own (info_merge.h)
  kEveryNodeOk,   // CONFIG SET, RESETSTAT, REWRITE on every node: +OK when all say so, else which one did not
};

namespace info_merge {
struct Plan;
}

// Shared between the client's session (which answers in request order) and the backends it is pending on
// (which answer in the order they were sent), so that either may go away first. A backend reply is applied
// only while `attempt` matches the attempt it was sent with: a request that was retried elsewhere or timed
// out ignores late replies from where it was before.
struct Request {
  Session* session = nullptr;  // null once the client is gone, and for parts
  RequestPtr parent;           // for a part: the request it is a part of

  std::string name;  // lower-case command name, for errors and stats
  const CommandInfo* cmd = nullptr;
  std::string wire;          // what is sent to a backend (a whole MULTI...EXEC block for a transaction)
  int replies_per_send = 1;  // replies the wire produces (transactions: one per command)
  bool has_slot = false;
  Slot slot = 0;
  Backend* fixed = nullptr;      // fan-out parts go to one given master, not by slot
  LoginPtr login;                // ACL pass-through: the client's user, which it runs as (null: the proxy's)
  std::uint8_t proto = 2;        // the protocol its client spoke when it sent it (HELLO): its reply's
  bool idempotent = false;       // safe to send again after a lost connection (read-only commands)
  bool blocking = false;         // runs on the session's dedicated connection
  std::uint64_t room_round = 0;  // at the cap of own connections, the round of asks for room it waited for
  // Reads from replicas (replica_reads.h): the replica it was last sent to (null: a master), and whether a
  // replica redirected it, so that the rest of its way is at masters.
  Backend* replica = nullptr;
  bool master_only = false;
  // WATCH, the EXEC of a watched transaction and UNWATCH run on the client's watch connection
  // (Session::watch_), never anywhere else: a watch lives on its connection, so they are never redirected or
  // sent again.
  enum class Watch : std::uint8_t { kNone, kWatch, kExec, kUnwatch };
  Watch watch = Watch::kNone;
  std::uint64_t watch_generation = 0;  // the watch connection's generation it belongs to (Session::watch_)
  bool pins_watch = false;             // a watched EXEC not sent yet: its connection stays open for it

  std::uint64_t seq = 0;  // its place among its client's commands (parts share their command's)
  std::uint64_t start_ns = 0;
  std::uint64_t deadline_ms = 0;  // loop time; 0 = none (blocking commands wait as long as the client asked)
  // Blocking commands: the deadline of their waits in the proxy (for a node that serves the slot, a retry),
  // set when they first have to wait; the time spent blocked at the server has no deadline of ours.
  std::uint64_t wait_deadline_ms = 0;
  std::uint64_t sent_ms = 0;  // loop time it was last sent to a node
  std::uint32_t attempt = 0;
  int redirects = 0;
  std::uint64_t retry_at_ms = 0;       // TRYAGAIN/CLUSTERDOWN backoff
  std::string last_cause;              // why it was last retried: the error if its deadline passes
  std::string last_error;              // the server's error that made it retry, as the server sent it
  std::uint64_t refused_since_ms = 0;  // first NOREPLICAS met (a master fencing writes around a slot move)

  // Where it is: at a backend (sent), waiting to be sent again (retrying), or answered (done). A request
  // that is none of these is with its client, parked behind an earlier one (Session::park).
  bool sent = false;
  bool retrying = false;
  bool done = false;
  bool held =
      false;  // answered while an earlier request of its client was not: counted in the client's bounds
  bool silent = false;  // CLIENT REPLY OFF or SKIP: the client asked not to get this reply
  bool push = false;    // a Pub/Sub message, not a reply: no latency to record
  // CLIENT TRACKING (tracking.h). The CLIENT CACHING its client asked for it (OPTIN's yes, OPTOUT's no), sent
  // right before it on the tracking connection it runs on.
  enum class Caching : std::uint8_t { kNone, kYes, kNo };
  Caching caching = Caching::kNone;
  // Its CACHING YES could not go with it (it met an ASK, and a node takes either ASKING or CLIENT CACHING as
  // the flag of the one command that follows, never both): what it read is not tracked, and the client is
  // told to drop its cache right after the reply.
  bool untracked_read = false;
  // The connection whose reply answered it (or one of its parts; `many_sources` when more than one did): an
  // out-of-band push from that connection follows its reply (Session::push_out_of_band).
  const Backend* source = nullptr;
  bool many_sources = false;
  std::string reply;  // the bytes the client gets

  // The deadline that bounds its next wait in the proxy.
  std::uint64_t wait_deadline() const { return deadline_ms != 0 ? deadline_ms : wait_deadline_ms; }

  // Splitting and fan-out.
  Merge merge = Merge::kNone;
  std::size_t parts_pending = 0;
  std::size_t part_index = 0;                       // for a part: its place among the parent's parts
  std::vector<std::string> part_replies;            // parent: replies of its parts by part_index
  std::vector<std::vector<std::size_t>> part_keys;  // kArrayByIndex parent: each part's key positions
  std::size_t key_count = 0;                        // kArrayByIndex parent: elements in the merged reply
  std::vector<std::weak_ptr<Request>> parts;        // split parent: its parts, by part_index (gone: answered)
  std::vector<Slot> part_slots;                     // and the slot of each
  Slot scan_slot = 0;                   // kScanCursor parent: the slot where the master's walk began
  std::uint16_t scan_tag = 0;           // and the tag of its address (scan_cursor.h)
  std::vector<std::string> part_nodes;  // fan-out parent: the node of each part, to name one that failed
  std::shared_ptr<const info_merge::Plan> info;  // kInfo parent: what the proxy adds to the masters' INFO
};

}  // namespace slotshift::proxy
