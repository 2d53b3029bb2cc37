// One connection from a worker to one cluster node, shared by every client session of that worker (or, for
// blocking commands, owned by one session). Requests are written in order and their replies matched first in,
// first out, so the connection never needs to know which client a reply is for.
#pragma once

#include <uv.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "common/host_port.h"
#include "common/resp.h"
#include "proxy/buffer.h"
#include "proxy/login.h"
#include "proxy/request.h"
#include "proxy/stream_writer.h"

namespace slotshift::proxy {

class Worker;

class Backend {
 public:
  // Every connection it opens logs in as `login` first (none: no AUTH), then switches to `protocol` (3: HELLO
  // 3, so that the node answers in RESP3, as the clients that use it asked). A `readonly` one, to a replica
  // that serves reads (replica_reads.h), sends READONLY next. Nothing else is written until all of these
  // succeeded.
  Backend(Worker& worker, HostPort address, LoginPtr login = nullptr, int protocol = 2,
          bool readonly = false);
  ~Backend();
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  const HostPort& address() const { return address_; }
  const std::string& name() const { return name_; }
  bool connected() const { return conn_ && conn_->connected; }
  std::size_t inflight() const { return pending_.size(); }
  std::uint64_t last_activity_ms() const { return last_activity_ms_; }
  const LoginPtr& login() const { return login_; }
  // The login for the connections made from now on (a SIGHUP's new masterauth): the open one stays as it is.
  void set_login(LoginPtr login) { login_ = std::move(login); }
  int protocol() const { return protocol_; }
  // A command run right after the login and HELLO (CLIENT TRACKING ON ...), gated as they are: nothing else
  // is written until the node has accepted it. Set before the first send.
  void set_setup(std::string command) { setup_ = std::move(command); }
  // Why the last connection failed, or "".
  const std::string& last_failure() const { return last_failure_; }
  // Replies that answered a client's request, ever (CLIENT TRACKING: whether a connection has read anything
  // a client may cache since the client last dropped its cache).
  std::uint64_t replies() const { return replies_; }

  // Queues the request's bytes (after an ASKING when `asking`), connecting first if need be. Bytes are
  // written at the worker's next flush, so every request of one client read goes out in one write.
  void send(const RequestPtr& request, bool asking);
  // A command of the proxy's own (topology refresh). `done` gets the reply, or nullptr on failure. `wire` may
  // hold `replies` commands sent as one pipeline: `done` then gets their replies' bytes one after the other.
  using InternalCallback = std::function<void(const std::string* reply)>;
  void send_internal(std::string wire, InternalCallback done, int replies = 1);

  // Pub/Sub: a connection in subscribed mode sends messages nobody asked for. With a sink, everything the
  // node sends (after the login) goes to it as it comes, whole messages one at a time; commands are written
  // with send_raw(), which expects no reply of its own. False when no connection could even be started.
  // On a RESP3 connection, push messages (none is asked for yet) go to the sink, or are dropped
  // without one, and every other reply answers its request.
  using PushSink = std::function<void(std::string_view message)>;
  void set_push_sink(PushSink sink) { push_sink_ = std::move(sink); }
  bool send_raw(std::string_view wire);

  // Writes what was queued. Called by the worker once per loop iteration for every backend that has output.
  void flush();
  // Answers requests whose deadline passed (their late replies are dropped when they come), and gives up on a
  // connection that has not answered anything for a whole request timeout.
  void check_deadlines(std::uint64_t now_ms);
  // Fails every pending request (retrying what is safe to retry, or answering each with `answer` when one is
  // given: nothing was run) and closes the connection; the next send reconnects.
  void fail(std::string_view why, std::string_view answer = {});
  // Closes without retrying anything: the worker is stopping or the owning client is gone.
  void shutdown();
  // Opens the connection now if there is none, so that the first request does not wait for the handshake.
  void warm();
  // Called whenever a connection fails (a client's watch connection: its WATCH is gone with it).
  void on_fail(std::function<void()> hook) { on_fail_ = std::move(hook); }

 private:
  struct Pending {
    RequestPtr request;  // null for internal commands
    InternalCallback internal;
    std::uint32_t attempt = 0;
    int skip = 0;                  // replies to swallow first (ASKING's +OK)
    int remaining = 1;             // replies still expected for this request
    std::string collected;         // transactions: every reply of the block
    std::uint64_t end_offset = 0;  // position of the request's last byte in the output stream
    bool counted = false;          // counted at the worker's HeldRequests as at a backend for `slot`
    Slot slot = 0;
    std::size_t bytes = 0;  // the request's bytes, counted in the worker's bytes in flight
  };

  // The libuv side: allocated on connect, freed by the close callback, so that callbacks in flight never see
  // a freed Backend (`owner` is null once the Backend has let go of it).
  struct Conn {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_getaddrinfo_t resolve_req;
    Backend* owner = nullptr;
    bool connected = false;
    bool closing = false;
    bool resolving = false;  // a uv_getaddrinfo is under way: it must finish before the Conn is freed
    bool tcp_closed = false;
    std::unique_ptr<TlsChannel> tls;  // null toward a plain TCP cluster
    ReadBuffer in;
    StreamWriter out;
  };

  // Where a request's bytes go: the connection's output, or, until the node has accepted the login, a buffer
  // that is written only then (a command behind a refused AUTH would run as the default user).
  std::string& outbox() { return awaiting_login_ ? after_login_ : conn_->out.buffer(); }
  // Opens a connection. It may fail at once (no descriptor left, an address the kernel refuses): then conn_
  // is null again and last_failure_ says why.
  void connect();
  void start_connect(const sockaddr* addr);
  void on_connected(int status);
  void on_read(ssize_t nread);
  void handle_reply(std::string_view reply);
  void close_conn();
  // The node refused the login: every command queued behind it was refused too (NOAUTH), and is answered
  // with the node's reason.
  // `login`: the AUTH was refused, else HELLO 3 or the setup.
  void refused_login(std::string_view reply, bool login);
  void mark_dirty();
  // `p` leaves pending_: its slot's count of requests at a backend goes down.
  void returned(const Pending& p);

  static void on_resolved(uv_getaddrinfo_t* req, int status, addrinfo* res);
  static void on_connect_cb(uv_connect_t* req, int status);
  static void on_alloc(uv_handle_t* handle, std::size_t suggested, uv_buf_t* buf);
  static void on_read_cb(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  static void on_write_error(void* owner, int status);

  Worker& worker_;
  HostPort address_;
  std::string name_;
  LoginPtr login_;
  int protocol_ = 2;
  bool readonly_ = false;
  std::string setup_;
  bool awaiting_login_ = false;
  std::string after_login_;
  std::function<void()> on_fail_;
  PushSink push_sink_;
  Conn* conn_ = nullptr;
  std::deque<Pending> pending_;
  std::uint64_t queued_bytes_ = 0;  // bytes ever queued on the current connection
  std::uint64_t connect_started_ms_ = 0;
  std::uint64_t last_activity_ms_ = 0;
  std::uint64_t kernel_seen_ = 0;  // the connection's bytes the kernel had taken at the last check_deadlines
  std::uint64_t replies_ = 0;
  std::string last_failure_;
  // A reply is whatever the server sends: LRANGE, HGETALL or KEYS on a big node answer with more elements,
  // and more bytes, than any request may carry. Only the nesting depth is bounded (the scanner keeps a frame
  // per level).
  resp::Scanner scanner_{resp::Scanner::Mode::kReply,
                         resp::Limits{std::size_t{1} << 62, std::size_t{1} << 62, 1024, 64ull << 20}};
  bool dirty_ = false;

  friend class Worker;
  friend class HeldRequests;
};

}  // namespace slotshift::proxy
