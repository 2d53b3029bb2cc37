// A worker: one thread, one libuv loop, its own listening socket (SO_REUSEPORT: the kernel spreads new
// clients over the workers), its own client sessions, backend connections and slot map. Nothing is shared
// between workers but read-mostly counters, so the hot path takes no lock.
#pragma once

#include <uv.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "common/topology.h"
#include "proxy/backend.h"
#include "proxy/config.h"
#include "proxy/held_requests.h"
#include "proxy/node_questions.h"
#include "proxy/replica_reads.h"
#include "proxy/request.h"
#include "proxy/router.h"
#include "proxy/slot_control.h"
#include "proxy/stats.h"

namespace slotshift::proxy {

inline constexpr std::string_view kVersion = "0.1.0";

class Session;
class Proxy;

// "-MOVED 3999 127.0.0.1:6381\r\n" (prefix_len 7; "-ASK ...", 5) -> slot and node.
bool parse_redirect(std::string_view reply, std::size_t prefix_len, Slot& slot, HostPort& node);

// Sessions a worker tells when its slot map changes (subscribers, monitors, trackers): a set that also
// counts, for other threads, the members of a worker's three sets together (Worker::quiet_for_handoff).
class Followers {
 public:
  explicit Followers(std::atomic<std::size_t>& count) : count_(count) {}
  void insert(Session* s) {
    if (set_.insert(s).second) count_.fetch_add(1);
  }
  void erase(Session* s) {
    if (set_.erase(s) > 0) count_.fetch_sub(1);
  }
  bool contains(Session* s) const { return set_.contains(s); }
  bool empty() const { return set_.empty(); }
  auto begin() const { return set_.begin(); }
  auto end() const { return set_.end(); }

 private:
  std::unordered_set<Session*> set_;
  std::atomic<std::size_t>& count_;
};

class Worker {
 public:
  Worker(Proxy& proxy, Config config, int index);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Binds the listening socket (so that errors show before any thread starts), or listens on the sockets a
  // predecessor handed over (upgrade.h); returns an error message or "".
  std::string bind(const std::vector<int>& inherited = {});
  // The listening sockets, for a successor (valid until the loop closes them: a drain, or the end).
  const std::vector<int>& listen_fds() const { return listen_fds_; }
  void start();
  // Asks the loop to close everything and return; join() waits for it. Nothing once the loop has ended.
  void stop();
  void join();
  // Stops accepting clients, closes each one once nothing of its is left to answer, and ends the loop once no
  // client is left, or at `deadline_ms` (on this loop's clock) closing those left (Proxy::drain). On this
  // worker's loop only.
  void drain(std::uint64_t deadline_ms);
  bool in_drain() const { return in_drain_; }
  // Closes `session` for the drain, counting it as answered or not (Proxy::drain_report).
  void close_for_drain(Session* session);
  // A reload's settings (Proxy::reload), on this worker's loop. With a new login, the shared connections
  // that used the old one make their next connection with the new one.
  void apply_config(const Config& next, bool login_changed);

  uv_loop_t* loop() { return &loop_; }
  std::uint64_t now_ms() const { return uv_now(const_cast<uv_loop_t*>(&loop_)); }
  const Config& config() const { return config_; }
  Stats& stats() { return stats_; }
  Router& router() { return router_; }
  Proxy& proxy() { return proxy_; }
  int index() const { return index_; }
  HeldRequests& held() { return held_; }
  ReplicaReads& replica_reads() { return replica_reads_; }

  // From another thread, once the registry has a handoff: whether this worker may take it at its next
  // dispatch or tick rather than now. Nothing held, no dispatch under way (HeldRequests::quiet_for_release),
  // and no client that must follow the slots' owner at once (a subscriber's shard channels, a tracker's
  // cache, a monitor).
  bool quiet_for_handoff() const { return held_.quiet_for_release() && followers_.load() == 0; }

  // Runs `op` on this worker's loop, soon (callable from any thread: the admin endpoint's control calls).
  // False if the loop is not running.
  bool post(std::function<void()> op);

  // A TLS connection that failed, `who` being "client HOST:PORT" or "node HOST:PORT" (a refused certificate,
  // a client speaking plain text to the TLS port): logged, at most once a second per worker, with how many
  // were not.
  void note_tls_failure(const std::string& who, const std::string& why);

  // Sends `command` (its wire bytes) to `node` on a connection kept for such questions (node_questions.h),
  // logged in and over TLS as every connection of the proxy's. `done` gets the reply's bytes, or null and why
  // there is none. For the admin endpoint's questions (route_check.h); on this worker's loop only.
  using NodeAnswer = NodeQuestions::Answer;
  void ask_node(const HostPort& node, std::string command, NodeAnswer done, int replies = 1);
  // Connections kept for ask_node() now (for tests).
  std::size_t question_connections() const { return questions_.size(); }

  // The slot map changed (a reload, a MOVED, a ROUTE): clients' shard channels follow their slots.
  void owners_changed();
  // Proxy::follow_shards, in this worker: its clients' shard channels of `slot` are subscribed at `node`.
  void follow_shards_here(Slot slot, const HostPort& node);
  // Sessions with subscriptions (Session::pubsub_), told of owners_changed().
  Followers& subscribers() { return subscribers_; }
  // Sessions in monitor mode (Session::monitor_), told of owners_changed() too.
  Followers& monitors() { return monitors_; }
  // Clients with CLIENT TRACKING on (tracking.h): told when the slot map changes.
  Followers& trackers() { return trackers_; }

  // The shared connection to `node` (created on first use), logged in as the proxy (masteruser/masterauth),
  // or, given a client's login (ACL pass-through), the one shared by the clients logged in as that user.
  // `protocol` 3: a connection on which the node answers in RESP3, for the clients that speak it.
  Backend* backend(const HostPort& node, const LoginPtr& login = nullptr, int protocol = 2);
  // The same for a replica that serves reads (--read-from): a connection of its own that says READONLY, and
  // is left alone for a while when it fails (ReplicaReads::failed).
  Backend* replica_backend(const HostPort& node, const LoginPtr& login, int protocol);
  // Sends a request to where it belongs: its fixed backend, or the owner of its slot. Answers it with an
  // error if no node serves the slot.
  void dispatch(const RequestPtr& request, bool asking = false, Backend* to = nullptr);
  // A backend's reply for `request`: follows MOVED/ASK, backs off on TRYAGAIN/CLUSTERDOWN, else completes.
  void on_backend_reply(const RequestPtr& request, std::string reply);
  // Sends `request` again after `delay_ms` (0: at the next timer tick), within its deadline. `server_error`
  // is the server's own error that made it retry, if one did: it is what the client gets if the request may
  // not be sent again (see Session::retry_started).
  void retry_later(const RequestPtr& request, std::uint64_t delay_ms, std::string_view cause,
                   std::string_view server_error = {});
  // The request's final reply (a part's reply goes to its parent, which merges once every part is in).
  void complete(const RequestPtr& request, std::string reply);

  void mark_dirty(Backend* backend) { dirty_.push_back(backend); }
  void forget_dirty(Backend* backend);
  void mark_dirty(Session* session);
  void forget_dirty(Session* session);
  bool stopping() const { return stopping_; }
  // Writes everything queued to backends. Called at the end of every loop iteration (and after timers).
  void flush_backends();
  // `r` needs a connection of its client's own and the cap of those is reached (Config::
  // max_blocking_connections): it waits for the other workers to make room, or is refused.
  void wait_for_room_or_refuse(const RequestPtr& r);

  void session_closed(Session* session);
  // Frees a backend at the next tick, out of any callback of its own.
  void retire(std::unique_ptr<Backend> backend) { retired_.push_back(std::move(backend)); }
  // A connection whose client has gone while commands of its are on their way there (a tracking
  // connection): they still run, as on one Redis; it closes once they are answered or their deadline passed.
  void drain(std::unique_ptr<Backend> backend) { draining_.push_back(std::move(backend)); }
  // Closes every client's own connection that no blocking command uses now; returns how many.
  std::size_t close_idle_dedicated();
  // Bytes of requests at this worker's backends, not answered yet (Config::max_inflight_bytes).
  std::size_t inflight_bytes() const { return inflight_bytes_ + waiting_bytes_; }
  // Something a client of this worker waits for from every worker (CLIENT LIST, CLIENT KILL: client_admin.h):
  // `check` runs at every tick, answers the client once its deadline passed, and returns whether it still
  // waits.
  void await_workers(std::function<bool(std::uint64_t now_ms)> check) {
    awaiting_.push_back(std::move(check));
  }

 private:
  void on_tick();
  // The tick comes every kTickMs while anything of the worker has a deadline, a retry or a client, and every
  // kIdleTickMs once nothing has (tick_fast_ false): an idle proxy, a sidecar whose application is quiet or
  // the many proxies of a fleet a move talks to, then wakes a few times a second instead of a hundred.
  // Whatever gives the worker work again (a client, a control call, a reload or retry to come) brings the
  // fast tick back before its first deadline can be missed (wake_tick).
  bool nothing_to_tick() const;
  bool work_without_tick() const;
  void wake_tick();
  // The slow tick, its first one at the end of the first hold this worker knows of when that comes sooner.
  // only_sooner: a slow tick already due before then is left as it is.
  void rest_tick(bool only_sooner = false);
  // The drain's check at every tick: closes the clients that are done, and ends the loop once nothing is
  // left or the deadline passed.
  void drain_step(std::uint64_t now);
  // The client a request (or the command it is a part of) comes from; null once the client is gone.
  static Session* owner_of(const Request& request);
  // Whether the request's client keeps its reads on masters whatever --read-from says.
  static bool client_reads_on_masters(const Request& request);
  // A retry whose time has come: sent again, kept waiting, or answered (see Session::retry_started).
  void retry_due(const RequestPtr& request, std::uint64_t now);
  // A watched command met a redirect: a MOVED still teaches the slot map where the slot is.
  void watch_met_redirect(std::string_view error);
  // MOVED/ASK/TRYAGAIN/CLUSTERDOWN: acts on it and returns true; false for any other error.
  bool follow_redirect(const RequestPtr& request, std::string_view error);
  std::string merge_parts(Request& parent);
  // INFO and CONFIG SET|RESETSTAT|REWRITE: every node's answer is needed (Merge::kInfo, kEveryNodeOk).
  std::string merge_every_node(Request& parent);
  static void on_connection(uv_stream_t* server, int status);
  static void on_tick_timer(uv_timer_t* timer) { static_cast<Worker*>(timer->data)->on_tick(); }
  static void on_async(uv_async_t* handle);
  static void on_control(uv_async_t* handle);

  Proxy& proxy_;
  Config config_;  // this worker's copy: a reload replaces it on the worker's own loop (apply_config)
  int index_;
  std::uint64_t tls_failure_logged_ms_ = 0;
  std::uint64_t tls_failures_unlogged_ = 0;
  uv_loop_t loop_{};
  // One listening socket, or those a predecessor handed over (one per worker of its, spread over these).
  std::vector<std::unique_ptr<uv_tcp_t>> listeners_;
  std::vector<int> listen_fds_;
  std::string listen_on(int fd);
  void close_listeners();
  uv_timer_t tick_{};
  uv_async_t stop_async_{};
  uv_check_t flush_{};  // runs after each poll phase: one write per dirty connection
  uv_async_t control_async_{};
  std::mutex control_mutex_;  // guards the two below: the only state another thread touches
  std::vector<std::function<void()>> control_ops_;
  bool control_open_ = false;
  std::thread thread_;
  Stats stats_;
  Router router_;
  // By "host:port" for the proxy's own login; with a client's login, by its user, password and "host:port".
  std::map<std::string, std::unique_ptr<Backend>> backends_;
  LoginPtr own_login_;  // masteruser/masterauth; null: no AUTH
  std::vector<std::unique_ptr<Backend>> retired_;
  std::vector<std::unique_ptr<Backend>> draining_;
  NodeQuestions questions_{*this, nullptr};  // ask_node()'s connections (the login is set in the constructor)
  std::atomic<std::size_t> followers_{0};    // members of the three sets below, read by other threads
  Followers subscribers_{followers_};
  Followers monitors_{followers_};
  Followers trackers_{followers_};
  std::vector<Backend*> dirty_;
  std::vector<Session*> dirty_sessions_;
  std::vector<RequestPtr> retries_;
  std::unordered_set<Session*> sessions_;
  HeldRequests held_;
  ReplicaReads replica_reads_;
  std::size_t inflight_bytes_ = 0;
  std::size_t waiting_bytes_ = 0;  // requests waiting in the proxy to be sent (again): retrying or parked
  bool stopping_ = false;
  bool in_drain_ = false;
  bool tick_fast_ = true;
  std::uint64_t drain_deadline_ms_ = 0;
  std::vector<std::function<bool(std::uint64_t)>> awaiting_;

  friend class Session;
  friend class Tracking;
  friend class ClientAdmin;
  friend class HeldRequests;
  friend class Backend;
  friend class Subscriptions;
  friend class Monitor;
};

struct ReloadOutcome {
  bool applied = false;
  std::string line;  // for the log
};

// What a drain did, for the line the process logs before it exits.
struct DrainReport {
  std::uint64_t elapsed_ms = 0;
  std::size_t closed_answered = 0;  // clients closed with nothing left to answer
  // Closed at the deadline (or by a second signal) with a command in flight, or a transaction or WATCH open.
  std::size_t closed_unanswered = 0;
};

// The whole process: its workers, the configuration and what is counted across workers.
class Proxy {
 public:
  explicit Proxy(Config config);
  // Binds every worker's socket and starts their threads. Returns an error message or "". `inherited`: the
  // listening sockets a predecessor handed over (upgrade.h), spread over the workers; a worker left without
  // one binds its own beside them (SO_REUSEPORT).
  std::string start(const std::vector<int>& inherited = {});
  // Every worker's listening sockets, for a successor.
  std::vector<int> listen_fds() const;
  void stop();
  void wait();
  // SIGTERM: every worker stops accepting clients and closes each one once it has nothing in flight (no
  // command unanswered or reply unwritten, no transaction being queued, no key watched), and ends once none
  // is left, or after `timeout`, closing those left. Returns at once; finished() says when every worker has
  // ended. /readyz says "draining" from now on.
  void drain(std::chrono::milliseconds timeout);
  bool draining() const { return draining_.load(std::memory_order_relaxed); }
  // Every worker's loop has ended (by a drain's end or stop()).
  bool finished() const { return running_workers_.load() == 0; }
  DrainReport drain_report() const;
  std::atomic<std::size_t>& drained_answered() { return drained_answered_; }
  std::atomic<std::size_t>& drained_unanswered() { return drained_unanswered_; }

  // The settings in force (a copy: a reload may replace them). Callable from any thread.
  Config config() const;
  // SIGHUP: `wanted`, the settings built again from their sources, take effect in every worker, but those
  // that need a restart (config_reload.h); the TLS files are read again (and, if they cannot be used, the
  // old ones and their names stay). Nothing changes when the settings that would take effect do not go
  // together. Says what happened.
  ReloadOutcome reload(const Config& wanted);
  const std::vector<std::unique_ptr<Worker>>& workers() const { return workers_; }
  std::atomic<std::size_t>& clients() { return clients_; }
  std::atomic<std::uint64_t>& next_client_id() { return next_client_id_; }
  // Connections of clients' own, for blocking commands, open now (Config::max_blocking_connections).
  std::atomic<std::size_t>& blocking_connections() { return blocking_connections_; }
  // At that cap, a worker with no such connection to close asks the other workers to close theirs that
  // nothing uses now (Worker::close_idle_dedicated): otherwise they would stay open, and count, until their
  // idle timeout. Rounds of asks, one at a time, are numbered from 1: this starts one unless one is under
  // way. room_round() is the latest round's number (0: none yet), room_made(round) whether that round has
  // ended.
  void make_room_for_own_connections(const Worker& asking);
  std::uint64_t room_round() const { return room_rounds_started_.load(); }
  bool room_made(std::uint64_t round) const { return room_rounds_done_.load() >= round; }
  std::uint64_t start_time_ms() const { return start_time_ms_; }
  // Every worker's counters added up (callable from any thread).
  Totals totals() const;
  // Whether clients should be sent here: every worker has loaded a slot map, a cluster node answered the
  // last reload of each, and the proxy is not draining. `why` says what is missing when not.
  bool ready(std::string* why = nullptr) const;
  HoldRegistry& holds() { return holds_; }
  // Bytes of requests held for slot holds, in every worker (callable from any thread).
  std::size_t held_bytes() const;
  // The topology a worker loaded last (its CLUSTER SHARDS or SLOTS), published whole; null before the first
  // load. The admin endpoint checks a ROUTE against it (route_check.h). Callable from any thread.
  void topology_loaded(TopologySnapshot topology);
  TopologySnapshot topology() const;
  // The TLS contexts that new connections use, toward clients and toward nodes; null where that side is plain
  // TCP. Callable from any thread.
  std::shared_ptr<const TlsContext> client_tls() const;
  std::shared_ptr<const TlsContext> backend_tls() const;

  // Shard channels of the proxy's clients, across workers (pubsub.h): per slot, how many are subscribed, and
  // how many subscriptions (or follow_shards() rounds) are under way. An SPUBLISH for a slot with something
  // under way waits (Worker::dispatch): sent now, it could reach a node before a subscription there.
  std::atomic<std::uint32_t>& shard_channels(Slot slot) { return shard_channels_[slot]; }
  std::atomic<std::uint32_t>& shard_pending(Slot slot) { return shard_pending_[slot]; }
  // An SPUBLISH for `slot` met MOVED or ASK toward `node`: every worker's clients subscribe their shard
  // channels of the slot there too. False when no client has one; otherwise `slot` counts as under way until
  // every worker has done so.
  bool follow_shards(Slot slot, const HostPort& node);
  // ask_node() from any thread, waiting for the reply until `deadline`: the reply's bytes (of `replies`
  // replies, for as many commands in `command`), or nullopt and why.
  std::optional<std::string> ask_node(const HostPort& node, std::string command,
                                      std::chrono::steady_clock::time_point deadline, std::string& why,
                                      int replies = 1);

 private:
  friend class Worker;  // counts itself out of running_workers_ when its loop ends

  Config config_;  // written by reload() on the main thread only; read elsewhere through config()
  mutable std::mutex config_mutex_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<std::size_t> clients_{0};
  std::atomic<std::uint64_t> next_client_id_{1};
  std::atomic<std::size_t> blocking_connections_{0};
  struct RoomRound {
    Proxy& proxy;
    std::uint64_t number;
    ~RoomRound();
  };
  std::atomic<std::uint64_t> room_rounds_started_{0};
  std::atomic<std::uint64_t> room_rounds_done_{0};
  std::atomic<int> running_workers_{0};
  std::atomic<bool> draining_{false};
  std::chrono::steady_clock::time_point drain_started_;
  std::atomic<std::size_t> drained_answered_{0};
  std::atomic<std::size_t> drained_unanswered_{0};
  std::uint64_t start_time_ms_ = 0;
  HoldRegistry holds_;
  mutable std::mutex topology_mutex_;  // taken once per reload, and by a ROUTE: never on a request's path
  TopologySnapshot topology_;
  // Builds both sides' contexts from config_; "" or why not.
  std::string load_tls(const Config& config, std::shared_ptr<const TlsContext>& client,
                       std::shared_ptr<const TlsContext>& backend);
  std::unique_ptr<std::atomic<std::uint32_t>[]> shard_channels_ {
    new std::atomic<std::uint32_t>[ kSlotCount ]()
  };
  std::unique_ptr<std::atomic<std::uint32_t>[]> shard_pending_ {
    new std::atomic<std::uint32_t>[ kSlotCount ]()
  };
  mutable std::mutex tls_mutex_;  // taken once per new connection, with TLS only
  std::shared_ptr<const TlsContext> client_tls_;
  std::shared_ptr<const TlsContext> backend_tls_;
};

}  // namespace slotshift::proxy
