// One client connection: reads and parses its commands, sends each where it belongs without waiting for
// earlier replies, and writes the replies back in the order the commands came.
#pragma once

#include <uv.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/host_port.h"
#include "common/resp.h"
#include "proxy/buffer.h"
#include "proxy/login.h"
#include "proxy/monitor.h"
#include "proxy/pubsub.h"
#include "proxy/request.h"
#include "proxy/stream_writer.h"
#include "proxy/tracking.h"

namespace slotshift::proxy {

class Worker;
class Backend;

class Session {
 public:
  // Accepts one pending connection of `server` (refusing it over max-clients).
  static void accept(Worker& worker, uv_stream_t* server);

  // Stops reading, drops what is queued and closes; the Session frees itself once libuv is done with it.
  void close();
  void on_request_done(Request& request);
  void check_idle(std::uint64_t now_ms);
  // The session's own connection to `node`, logged in as `login` (null: the proxy's own login), for blocking
  // commands; null when the process has max-blocking-connections of them already.
  Backend* dedicated(const HostPort& node, const LoginPtr& login, int protocol);
  // Counts one more connection of a client's own (blocking commands, WATCH) against max-blocking-connections;
  // false at the cap.
  bool reserve_own_connection();
  // Closes the session's own connections that have had no command for `idle_ms`; returns how many.
  std::size_t close_idle_dedicated(std::uint64_t idle_ms);
  // Answers what passed its deadline on the session's own connections, and closes those idle for a while.
  void check_deadlines(std::uint64_t now_ms);

  // Per-client order through retries. A request that has to be sent again (TRYAGAIN, CLUSTERDOWN,
  // NOREPLICAS, a connection lost before it was sent) must not be overtaken by the client's later commands:
  // while it waits, they wait too (parked here, in the client's order), and it is itself sent again only if
  // no later command of the client for its slot has been sent meanwhile (Worker::on_tick).
  void retry_started(const Request& request);
  void retry_ended(const Request& request);
  // Whether `request` must wait behind an earlier request of this client that is waiting to be sent again.
  bool must_wait(const Request& request) const {
    return !retrying_.empty() && request.seq > *retrying_.begin();
  }
  void park(const RequestPtr& request, bool asking, Backend* to);
  // What the client's later commands for `request`'s slot have become.
  enum class Later : std::uint8_t { kNone, kSent, kDone };
  Later later_on_slot(const Request& request) const;
  // Reading pauses and resumes with the process's bounds (called on every tick for a paused client).
  void pause_or_resume_reading();

  // Where a WATCH or a watched EXEC goes: the watch connection of its generation, or null when what it
  // watched there is gone (WATCH then answers OK, and EXEC nil).
  Backend* watch_connection(const Request& request);

  // A message for the client that answers no command (RESP2 Pub/Sub, MONITOR), in its place after every reply
  // already due.
  void push(std::string_view message);
  // A RESP3 push (Pub/Sub, an invalidation): it waits only for what must reach the client before it, so
  // that a command that blocks does not hold it back. That is the replies `source` already sent (its
  // node's order), and any subscription command still queued; with no source, every reply already
  // answered or on its way but those of blocking commands still waiting.
  void push_out_of_band(std::string_view message, const Backend* source);
  // The slot map changed: shard channels follow their slots (Subscriptions::owners_changed).
  void owners_changed() {
    if (pubsub_) pubsub_->owners_changed();
    if (monitor_) monitor_->owners_changed();
  }
  // An SPUBLISH for `slot` goes to `node` now (a MOVED, an ASK): shard channels are subscribed there too.
  // True while such a subscription is not confirmed yet.
  bool shards_follow(Slot slot, const HostPort& node) { return pubsub_ && pubsub_->follow(slot, node); }

  std::uint64_t id() const { return id_; }
  bool closing() const { return closing_; }
  // Whether a drain may close the client now without taking anything from it: every command it sent is
  // read, answered and written to the socket, and it is not between commands that belong together (a
  // transaction being queued, keys watched for one, a login being checked). A command still arriving counts
  // as in flight while its bytes keep coming.
  bool done_for_drain(std::uint64_t now_ms) const;
  // done_for_drain(), and the client sent nothing for a while: closed now, it is unlikely to have a command
  // on its way. A client that keeps sending is closed behind a reply instead (flush_replies), with which its
  // FIN travels.
  bool idle_for_drain(std::uint64_t now_ms) const;
  // Writes every reply that is ready, in order (called by the worker once per loop iteration).
  void flush_replies();

 private:
  using Args = std::span<const std::string_view>;

  friend class Worker;
  friend class HeldRequests;
  friend class Subscriptions;
  friend class Monitor;
  friend class ClientAdmin;
  friend class Tracking;
  explicit Session(Worker& worker);
  ~Session();

  // done_for_drain() but for the replies being written and the input not read yet.
  bool quiet_for_drain(std::uint64_t now_ms) const;
  // Bytes the client sent that this loop has not read (closed on them, the socket would answer with a reset,
  // and the client's kernel would drop the replies it had not read yet).
  bool unread_input() const;
  // TCP_CORK on the client's socket: partial segments wait until it is off or the socket closes.
  void set_cork(bool on);
  // The client's socket descriptor, or -1 once it has none.
  int socket_fd() const;

  void on_read(ssize_t nread);
  // Runs every whole command in the input buffer (stopping while a login is being checked). A login check
  // that ends at once (its connection could not even start) calls it from inside itself: that call does
  // nothing, and the outer one goes on.
  void process_input();
  bool in_input_ = false;
  void handle(Args args, std::string_view raw);
  // A command of the normal path: routed by its keys, split, fanned out, or sent to any master.
  void route(Args args, std::string_view raw, std::string name, const CommandInfo* cmd);
  // Commands the proxy answers itself (PING, SELECT, CLIENT, INFO, ...). False if `name` is not one of them.
  bool answer_locally(const std::string& name, Args args);
  // (P|S)SUBSCRIBE and (P|S)UNSUBSCRIBE, on the client's own connections (pubsub.h). False if `name` is not
  // one of them.
  bool pubsub_command(const std::string& name, Args args, const CommandInfo* cmd);
  // Leaves subscribed mode and closes the subscriptions' connections (RESET, or the client left).
  void end_subscriptions();
  // MONITOR, on connections of the client's own to every master (monitor.h).
  void monitor(Args args, const CommandInfo* cmd);
  // Leaves monitor mode and closes the monitor's connections (RESET, or the client left).
  void end_monitor();
  void queue_transaction(Args args, std::string_view raw, std::string name, const CommandInfo* cmd);
  // WATCH: on the client's watch connection to the master of the keys' slot.
  void watch(Args args, std::string_view raw);
  // UNWATCH, DISCARD, RESET, or an EXEC that sent nothing: nothing is watched any more. The UNWATCH goes to
  // the watch connection in the client's order (after an EXEC still waiting to go there); the client gets its
  // reply when `answer_client`, else it is silent.
  void unwatch(bool answer_client);
  // A WATCH met a redirect (its slot is elsewhere): nothing watched on its connection holds.
  void watch_redirected(const Request& watch);
  void discard_transaction();
  void exec_transaction();

  RequestPtr new_request(std::string name, const CommandInfo* cmd);
  // A reply the proxy writes itself, in its place among the client's pending replies.
  void answer(std::string_view name, std::string reply);
  void enqueue(const RequestPtr& request);
  // The error a command gets before it is sent anywhere (unknown, wrong arity, refused, ...), or "" when it
  // may go on. The same checks for a command alone and for one queued in a transaction.
  std::string refusal(Args args, const std::string& name, const CommandInfo* cmd, bool in_transaction);
  void split(const RequestPtr& parent, Args args, const std::vector<std::size_t>& keys, std::size_t step);
  void fan_out(const RequestPtr& parent, Args args, Merge merge);
  void scan(Args args, const std::string& name, const CommandInfo* cmd);
  bool client_command(Args args);
  // RESET: the connection's state back to a new connection's.
  void reset_state();
  // AUTH, or HELLO's AUTH option: answers `ok_reply` once `login` is accepted (checked by the proxy, or by a
  // node with ACL pass-through), else the error Redis gives.
  // HELLO's SETNAME takes effect only with the login.
  // `take_effect` runs once the login is accepted (HELLO's SETNAME and protocol).
  void log_in(std::string_view name, Login login, std::string ok_reply, std::function<void()> take_effect);
  std::string hello_reply(std::uint8_t protocol) const;
  // HELLO 2 or 3 (RESET: 2).
  void set_protocol(std::uint8_t protocol);
  // INFO [section ...]: the proxy's own sections at once, the masters' fanned out and merged (info_merge.h).
  void info(Args args);
  // CONFIG SET, RESETSTAT, REWRITE with allow-admin-commands: on every node, masters and replicas.
  void config_every_node(Args args, std::string name, const CommandInfo* cmd);

  static void on_alloc(uv_handle_t* handle, std::size_t suggested, uv_buf_t* buf);
  static void on_read_cb(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  static void on_write_error(void* owner, int status);

  Worker& worker_;
  uv_tcp_t tcp_{};
  std::unique_ptr<TlsChannel> tls_;        // null on a plain TCP port
  std::unique_ptr<Subscriptions> pubsub_;  // made by the first (P|S)(UN)SUBSCRIBE
  std::unique_ptr<Monitor> monitor_;       // made by the first MONITOR; freed with the session
  ReadBuffer in_;
  StreamWriter out_;
  resp::Scanner scanner_;
  std::deque<RequestPtr> queue_;   // in the client's order; answered from the front
  std::vector<std::size_t> keys_;  // reused by keys_of
  std::uint64_t id_ = 0;
  std::string client_name_;
  std::string peer_;
  std::string laddr_;  // the proxy's address this client connected to, as CLIENT LIST's laddr
  const CommandInfo* last_cmd_ = nullptr;  // the last known command run (CLIENT LIST's cmd)
  std::uint64_t created_ms_ = 0;
  std::uint64_t last_activity_ms_ = 0;
  bool reading_ = true;
  bool dirty_ = false;          // has replies ready; the worker flushes it at the end of the loop iteration
  std::size_t held_bytes_ = 0;  // replies answered but waiting behind an earlier, unanswered one
  bool closing_ = false;
  bool quit_after_flush_ = false;  // QUIT or a protocol error: nothing more is read; close once answered
  // Whether the client may run commands: at once without client logins, else once AUTH succeeded. With ACL
  // pass-through, who it logged in as (its requests carry it, Request::login).
  bool authenticated_ = false;
  LoginPtr login_;
  // The protocol the client chose with HELLO (2 or 3): its requests run on connections that speak it, and the
  // replies the proxy makes itself take its shapes.
  std::uint8_t proto_ = 2;
  // ACL pass-through: the connection on which a node checks the client's AUTH. Nothing more of the client is
  // read or run until the node has answered (its later commands must run as whoever it turns out to be).
  std::unique_ptr<Backend> login_check_;
  // CLIENT TRACKING (tracking.h), made by the first one; and what CLIENT CACHING chose for the command
  // being handled, which its requests carry.
  std::unique_ptr<Tracking> tracking_;
  Request::Caching current_caching_ = Request::Caching::kNone;
  // A command that must not overtake the client's earlier ones (CLIENT TRACKING, which moves the client's
  // commands to other connections) waits, unread, until they are all answered.
  bool waiting_for_earlier_ = false;
  bool all_answered() const;
  // CLIENT REPLY OFF / SKIP: replies the client asked not to get are dropped (Request::silent).
  bool reply_off_ = false;
  bool skip_next_reply_ = false;
  // Requests kept back for a slot hold, in the client's order (see held_requests.h); empty but during a hold.
  std::deque<RequestPtr> on_hold_;
  std::uint64_t next_seq_ = 0;  // numbers the client's commands (Request::seq)
  // Blocking commands get connections of their own, one per node and login (a client that logs in again as
  // another user must not run as the first one), kept while the client uses them.
  std::map<std::string, std::unique_ptr<Backend>> dedicated_;
  // Per-client order through retries (retry_started): the seqs of requests waiting to be sent again, and the
  // later requests parked behind them.
  std::multiset<std::uint64_t> retrying_;
  struct Parked {
    RequestPtr request;
    bool asking = false;
    Backend* to = nullptr;
  };
  std::deque<Parked> parked_;

  // WATCH. The watched keys' slot, and the client's own connection to its master, on which every WATCH of a
  // transaction and then its EXEC run (counted as a blocking connection; closed when idle and nothing is
  // watched). Each watch connection has a generation, renewed whenever what is watched there may be gone (the
  // connection failed, or a WATCH met a redirect). A WATCH or EXEC goes only to the connection of its
  // generation; when there is none, WATCH answers OK and EXEC nil, as when a watched key changed.
  struct WatchConnection {
    std::unique_ptr<Backend> backend;
    std::uint64_t generation = 0;
  };
  WatchConnection watch_;  // where new WATCHes go
  // Replaced (a WATCH on another node, a login as someone else) while a command was on its way there, or an
  // EXEC still to go there: closed once that is done.
  std::vector<WatchConnection> retiring_watches_;
  std::uint64_t next_watch_generation_ = 0;
  bool watching_ = false;
  bool reads_on_masters_ = false;  // READWRITE: reads stay on masters whatever --read-from says
  Slot watch_slot_ = 0;
  std::uint64_t watched_generation_ =
      0;  // the watch in force: its connection's generation at its first WATCH
  bool watch_broken() const { return !watch_.backend || watch_.generation != watched_generation_; }
  // WATCHes not answered yet (their seqs, in order), and EXECs that wait for those before them: each goes
  // only once they are in force (after one that met a redirect it would run unwatched), at the next tick (not
  // from inside the callback that answered the WATCH). The client's later commands wait behind them.
  std::deque<std::uint64_t> watches_pending_;
  std::deque<RequestPtr> execs_after_watch_;
  void release_execs_after_watch();
  // The generations of watched EXECs not sent yet (deferred, parked or held): their connections stay open.
  std::multiset<std::uint64_t> unsent_execs_;
  void unpin(Request& exec);
  WatchConnection* watch_connection_of(std::uint64_t generation);
  // Nothing watched on `connection` holds any more (it failed, or a WATCH there was not answered OK).
  void renew_generation(WatchConnection& connection) { connection.generation = ++next_watch_generation_; }
  // The watch connection is replaced: it is kept until what is on its way there is answered.
  void retire_watch_connection();
  void close_watch_connection(WatchConnection& connection);
  // Closes retiring watch connections that are done, and the watch connection if idle for `idle_ms` with
  // nothing watched; returns how many were closed.
  std::size_t close_idle_watch(std::uint64_t idle_ms);

  // MULTI ... EXEC: commands are checked and queued here, then sent as one block to the node of their slot.
  bool in_multi_ = false;
  bool multi_failed_ = false;
  bool multi_has_slot_ = false;
  Slot multi_slot_ = 0;
  std::size_t multi_count_ = 0;
  std::string multi_wire_;
};

}  // namespace slotshift::proxy
