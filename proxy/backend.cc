#include "proxy/backend.h"
#include "proxy/log.h"

#include <cstdio>
#include <cstring>

#include "proxy/errors.h"
#include "proxy/worker.h"

namespace slotshift::proxy {

Backend::Backend(Worker& worker, HostPort address, LoginPtr login, int protocol, bool readonly)
    : worker_(worker),
      address_(std::move(address)),
      name_(address_.str()),
      login_(std::move(login)),
      protocol_(protocol),
      readonly_(readonly) {}

Backend::~Backend() {
  if (dirty_) worker_.forget_dirty(this);
  if (conn_) close_conn();
  for (const auto& p : pending_)
    returned(p);
}

void Backend::shutdown() {
  std::deque<Pending> pending;
  pending.swap(pending_);
  if (conn_) close_conn();
  for (auto& p : pending) {
    returned(p);
    if (p.internal) p.internal(nullptr);
  }
}

void Backend::warm() {
  if (!conn_) connect();
}

void Backend::returned(const Pending& p) {
  if (p.counted) worker_.held().returned(p.slot);
  worker_.inflight_bytes_ -= p.bytes;
}

void Backend::mark_dirty() {
  if (!dirty_) {
    dirty_ = true;
    worker_.mark_dirty(this);
  }
}

void Backend::send(const RequestPtr& request, bool asking) {
  if (!conn_) connect();
  if (!conn_) {
    if (request->watch != Request::Watch::kNone) {
      // A watch connection that cannot even be opened watches nothing (see fail()).
      if (on_fail_) on_fail_();
      worker_.complete(request, request->watch != Request::Watch::kExec ? std::string("+OK\r\n")
                                                                        : std::string(errors::kNilArray));
      return;
    }
    // The connect failed before it began: nothing was sent, so the request may go again (within its deadline,
    // by when the error reaches its client).
    worker_.retry_later(request, 50, name_ + ": " + last_failure_);
    return;
  }
  request->sent = true;
  Pending p;
  p.request = request;
  // A blocking command may wait for hours: it is not counted in the bytes in flight, which pause every
  // client.
  p.bytes = request->blocking ? 0 : request->wire.size();
  worker_.inflight_bytes_ += p.bytes;
  request->sent_ms = worker_.now_ms();
  p.attempt = request->attempt;
  p.remaining = request->replies_per_send;
  auto& out = outbox();
  if (asking) {
    out.append("*1\r\n$6\r\nASKING\r\n");
    queued_bytes_ += 16;
    p.skip = 1;
  }
  if (request->caching != Request::Caching::kNone && !setup_.empty()) {
    if (asking) {
      // A node keeps ASKING and CLIENT CACHING each for the one command that follows, and either resets the
      // other: this read goes untracked (the client's cache is dropped after its reply), OPTOUT's NO is moot.
      if (request->caching == Request::Caching::kYes) {
        Request& top = request->parent ? *request->parent : *request;
        top.untracked_read = true;
      }
    } else {
      static constexpr std::string_view kYes = "*3\r\n$6\r\nCLIENT\r\n$7\r\nCACHING\r\n$3\r\nYES\r\n";
      static constexpr std::string_view kNo = "*3\r\n$6\r\nCLIENT\r\n$7\r\nCACHING\r\n$2\r\nNO\r\n";
      const std::string_view caching = request->caching == Request::Caching::kYes ? kYes : kNo;
      out.append(caching);
      queued_bytes_ += caching.size();
      ++p.skip;
    }
  }
  out.append(request->wire);
  queued_bytes_ += request->wire.size();
  p.end_offset = queued_bytes_;
  // Blocking commands may wait forever: a HOLD does not wait for them (see held_requests.h).
  if (request->has_slot && !request->blocking) {
    p.counted = true;
    p.slot = request->slot;
    worker_.held().sent(p.slot);
  }
  if (pending_.empty()) last_activity_ms_ = worker_.now_ms();
  pending_.push_back(std::move(p));
  mark_dirty();
}

void Backend::send_internal(std::string wire, InternalCallback done, int replies) {
  if (!conn_) connect();
  if (!conn_) {
    done(nullptr);
    return;
  }
  Pending p;
  p.internal = std::move(done);
  p.remaining = replies;
  outbox().append(wire);
  queued_bytes_ += wire.size();
  p.end_offset = queued_bytes_;
  if (pending_.empty()) last_activity_ms_ = worker_.now_ms();
  pending_.push_back(std::move(p));
  mark_dirty();
}

bool Backend::send_raw(std::string_view wire) {
  if (!conn_) connect();
  if (!conn_) return false;
  outbox().append(wire);
  queued_bytes_ += wire.size();
  last_activity_ms_ = worker_.now_ms();
  mark_dirty();
  return true;
}

void Backend::flush() {
  dirty_ = false;
  if (!conn_ || !conn_->connected) return;  // on_connected flushes
  const int rc = conn_->out.flush();
  if (rc < 0) fail(std::string("write failed: ") + uv_strerror(rc));
}

void Backend::connect() {
  conn_ = new Conn;
  conn_->owner = this;
  conn_->out.owner = this;
  conn_->out.on_error = &Backend::on_write_error;
  queued_bytes_ = 0;
  kernel_seen_ = 0;
  connect_started_ms_ = worker_.now_ms();
  last_activity_ms_ = connect_started_ms_;
  scanner_.reset();
  worker_.stats().backend_connects.add();
  uv_tcp_init(worker_.loop(), &conn_->tcp);
  conn_->tcp.data = conn_;
  conn_->out.attach(reinterpret_cast<uv_stream_t*>(&conn_->tcp));
  if (const auto context = worker_.proxy().backend_tls()) {
    std::string error;
    conn_->tls = TlsChannel::make(*context, error);
    if (!conn_->tls) {
      fail("TLS: " + error);
      return;
    }
    conn_->out.use_tls(conn_->tls.get());
  }
  // The login is the connection's first command, then the protocol and the setup, and nothing else is
  // written until the node has accepted them all: a command behind a refused AUTH would run as the default
  // user, where that one needs no password, and one behind a refused HELLO 3 would answer in RESP2.
  std::vector<std::string> setup;
  if (login_) setup.push_back(auth_command(*login_));
  if (protocol_ == 3) {
    std::string hello;
    resp::append_command(hello, {"HELLO", "3"});
    setup.push_back(std::move(hello));
  }
  if (!setup_.empty()) setup.push_back(setup_);
  for (std::size_t i = 0; i < setup.size(); ++i) {
    conn_->out.buffer().append(setup[i]);
    queued_bytes_ += setup[i].size();
    awaiting_login_ = true;
    Pending p;
    const bool last = i + 1 == setup.size();
    p.internal = [this, last, i](const std::string* reply) {
      if (!reply) return;
      // AUTH answers +OK, HELLO 3 a map: anything else, an error above all, is a refusal.
      if (reply->empty() || ((*reply)[0] != '+' && (*reply)[0] != '%')) {
        refused_login(*reply, login_ && i == 0);
        return;
      }
      if (!last) return;
      awaiting_login_ = false;
      if (conn_ && !after_login_.empty()) {
        conn_->out.buffer().append(after_login_);
        std::string().swap(after_login_);
        mark_dirty();
      }
    };
    p.end_offset = queued_bytes_;
    pending_.push_back(std::move(p));
  }
  if (readonly_) {
    // A replica answers MOVED to every command of a connection that has not said READONLY. It goes right
    // behind the login (held with what follows it until the node accepts the login), so that no command
    // goes before it; a node that refuses it (an ACL without it) fails the connection, and the reads waiting
    // on it go elsewhere.
    static constexpr std::string_view kReadonly = "*1\r\n$8\r\nREADONLY\r\n";
    outbox().append(kReadonly);
    queued_bytes_ += kReadonly.size();
    Pending p;
    p.internal = [this](const std::string* reply) {
      if (!reply || reply->starts_with("+")) return;
      fail("READONLY refused: " + reply->substr(0, reply->find('\r')));
    };
    p.end_offset = queued_bytes_;
    pending_.push_back(std::move(p));
  }

  sockaddr_storage addr{};
  if (uv_ip4_addr(address_.host.c_str(), address_.port, reinterpret_cast<sockaddr_in*>(&addr)) == 0 ||
      uv_ip6_addr(address_.host.c_str(), address_.port, reinterpret_cast<sockaddr_in6*>(&addr)) == 0) {
    start_connect(reinterpret_cast<const sockaddr*>(&addr));
    return;
  }
  // A host name (a seed given by name, a node announcing a hostname): resolve without blocking the loop.
  conn_->resolve_req.data = conn_;
  conn_->resolving = true;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  const std::string port = std::to_string(address_.port);
  const int rc = uv_getaddrinfo(worker_.loop(), &conn_->resolve_req, &Backend::on_resolved,
                                address_.host.c_str(), port.c_str(), &hints);
  if (rc < 0) {
    conn_->resolving = false;
    fail(std::string("cannot resolve: ") + uv_strerror(rc));
  }
}

void Backend::on_resolved(uv_getaddrinfo_t* req, int status, addrinfo* res) {
  auto* conn = static_cast<Conn*>(req->data);
  conn->resolving = false;
  Backend* self = conn->owner;
  if (!self || conn->closing) {
    if (res) uv_freeaddrinfo(res);
    if (conn->tcp_closed) delete conn;  // the handle closed while we resolved: the Conn is ours to free
    return;
  }
  if (status < 0 || !res) {
    if (res) uv_freeaddrinfo(res);
    self->fail(std::string("cannot resolve ") + self->address_.host + ": " + uv_strerror(status));
    return;
  }
  self->start_connect(res->ai_addr);
  uv_freeaddrinfo(res);
}

void Backend::start_connect(const sockaddr* addr) {
  uv_tcp_nodelay(&conn_->tcp, 1);
  conn_->connect_req.data = conn_;
  const int rc = uv_tcp_connect(&conn_->connect_req, &conn_->tcp, addr, &Backend::on_connect_cb);
  if (rc < 0) fail(std::string("cannot connect: ") + uv_strerror(rc));
}

void Backend::on_connect_cb(uv_connect_t* req, int status) {
  auto* conn = static_cast<Conn*>(req->data);
  if (!conn->owner || conn->closing) return;
  conn->owner->on_connected(status);
}

void Backend::on_connected(int status) {
  if (status < 0) {
    fail(std::string("cannot connect: ") + uv_strerror(status));
    return;
  }
  conn_->connected = true;
  last_activity_ms_ = worker_.now_ms();
  uv_read_start(reinterpret_cast<uv_stream_t*>(&conn_->tcp), &Backend::on_alloc, &Backend::on_read_cb);
  // With TLS the handshake's first flight goes out now; the commands follow once it is done (see
  // StreamWriter), within the connect timeout (check_deadlines).
  if (conn_->tls && !conn_->tls->start()) {
    fail("TLS: " + conn_->tls->error());
    return;
  }
  flush();
}

void Backend::on_alloc(uv_handle_t* handle, std::size_t, uv_buf_t* buf) {
  auto* conn = static_cast<Conn*>(handle->data);
  if (conn->tls) {
    *buf = conn->tls->read_space();
    return;
  }
  std::size_t hint = conn->owner ? conn->owner->scanner_.size_hint() : 0;
  *buf = conn->in.prepare(64 * 1024, hint);
}

void Backend::on_read_cb(uv_stream_t* stream, ssize_t nread, const uv_buf_t*) {
  auto* conn = static_cast<Conn*>(stream->data);
  if (!conn->owner || conn->closing) return;
  conn->owner->on_read(nread);
}

void Backend::on_write_error(void* owner, int status) {
  auto* self = static_cast<Backend*>(owner);
  self->fail(std::string("write failed: ") + uv_strerror(status));
}

void Backend::on_read(ssize_t nread) {
  if (nread == 0 || nread == UV_EAGAIN) return;
  if (nread < 0) {
    fail(nread == UV_EOF ? "connection closed by the server"
                         : std::string("read failed: ") + uv_strerror(static_cast<int>(nread)));
    return;
  }
  Conn* conn = conn_;
  if (conn->tls) {
    const long plain = conn->tls->decrypt(static_cast<std::size_t>(nread), conn->in);
    if (plain < 0) {
      worker_.note_tls_failure("node " + name_, conn->tls->error());
      fail("TLS: " + conn->tls->error());
      return;
    }
    // The handshake's next flight, or the commands that waited for its end.
    if (conn->tls->has_output() || conn->tls->handshake_done()) {
      const int rc = conn->out.flush();
      if (rc < 0) {
        fail(std::string("write failed: ") + uv_strerror(rc));
        return;
      }
    }
    if (plain == 0) {
      if (conn->tls->peer_closed()) fail("connection closed by the server");
      return;
    }
  } else {
    conn->in.commit(static_cast<std::size_t>(nread));
  }
  last_activity_ms_ = worker_.now_ms();
  while (conn_ == conn) {
    const std::string_view data = conn->in.data();
    const auto status = scanner_.scan(data);
    if (status == resp::Status::kIncomplete) break;
    if (status == resp::Status::kError) {
      fail("invalid reply from the server: " + scanner_.error());
      return;
    }
    const std::size_t size = scanner_.size();
    scanner_.reset();
    // handle_reply may fail() this backend (which would free the buffer), so take the bytes out first.
    const std::string_view reply = data.substr(0, size);
    handle_reply(reply);
    if (conn_ != conn) return;
    conn->in.consume(size);
  }
  if (conn_ != conn) return;
  conn->in.trim(64 * 1024);
  // A close_notify after the replies: they were used, and the connection is over.
  if (conn->tls && conn->tls->peer_closed()) fail("connection closed by the server");
}

void Backend::handle_reply(std::string_view reply) {
  if (protocol_ == 3 && !reply.empty() && reply[0] == '>') {
    // Out of band on a RESP3 connection: it answers no request.
    if (push_sink_) push_sink_(reply);
    return;
  }
  // A subscribed connection: what is not the login's answer is a message or a confirmation for the sink.
  if (push_sink_ && protocol_ == 2 && (pending_.empty() || !pending_.front().internal)) {
    push_sink_(reply);
    return;
  }
  if (pending_.empty()) {
    fail("the server sent a reply nobody asked for");
    return;
  }
  Pending& p = pending_.front();
  if (p.skip > 0) {
    --p.skip;
    // CLIENT CACHING YES refused (an ACL without it): the read that follows is not tracked.
    if (!reply.empty() && reply[0] == '-' && p.request && p.request->caching == Request::Caching::kYes) {
      Request& top = p.request->parent ? *p.request->parent : *p.request;
      top.untracked_read = true;
    }
    return;
  }
  if (p.internal) {
    if (--p.remaining > 0) {
      p.collected.append(reply);
      return;
    }
    auto cb = std::move(p.internal);
    std::string bytes = std::move(p.collected);
    bytes.append(reply);
    returned(p);
    pending_.pop_front();
    cb(&bytes);
    return;
  }
  if (--p.remaining > 0) {
    p.collected.append(reply);
    return;
  }
  RequestPtr request = std::move(p.request);
  const bool current = !request->done && request->attempt == p.attempt;
  std::string bytes;
  if (p.collected.empty()) {
    bytes.assign(reply);
  } else {
    bytes = std::move(p.collected);
    bytes.append(reply);
  }
  returned(p);
  pending_.pop_front();
  if (current) {
    request->sent = false;
    ++replies_;
    // Where its reply came from: the node's later pushes on this connection follow it to the client.
    Request& top = request->parent ? *request->parent : *request;
    if (top.source && top.source != this) top.many_sources = true;
    top.source = this;
    worker_.on_backend_reply(request, std::move(bytes));
  }
}

void Backend::check_deadlines(std::uint64_t now_ms) {
  if (pending_.empty()) return;
  const auto timeout = static_cast<std::uint64_t>(worker_.config().request_timeout.count());
  if (conn_ && (!conn_->connected || (conn_->tls && !conn_->tls->handshake_done())) &&
      now_ms - connect_started_ms_ > static_cast<std::uint64_t>(worker_.config().connect_timeout.count())) {
    fail(conn_->connected ? "TLS handshake timed out" : "connect timed out");
    return;
  }
  // The node taking the oldest request's bytes counts as activity, as its reply's bytes do (on_read): a large
  // value over a slow path is still on its way, and the node has said nothing wrong. Bytes of the requests
  // behind it do not count: a node stuck in a slow script takes those into its socket buffer all the same.
  if (conn_ && conn_->connected) {
    const std::uint64_t taken = conn_->out.kernel_total();
    if (taken > kernel_seen_ && kernel_seen_ < pending_.front().end_offset) last_activity_ms_ = now_ms;
    kernel_seen_ = taken;
  }
  for (auto& p : pending_) {
    if (!p.request) continue;
    Request& r = *p.request;
    if (r.done || r.attempt != p.attempt) continue;
    if (r.deadline_ms == 0 || r.deadline_ms > now_ms) break;
    // Bytes of the oldest request, or of a reply, moved within the timeout: it and the requests behind it
    // wait on, as a client's socket timeout would. An error now would cut a transfer that is going well, and
    // leave the client unsure whether its write was applied; once nothing moves for a whole timeout, the
    // connection fails below, and they with it.
    if (now_ms - last_activity_ms_ < timeout) break;
    worker_.stats().errors_timeout.add();
    worker_.complete(
        p.request, errors::timeout("no reply from " + name_ + " within " + std::to_string(timeout) + " ms"));
  }
  // Nothing at all came back for a whole request timeout while commands were waiting: the node or the path to
  // it is gone (a blocking command on a dedicated connection has no deadline and never trips this).
  const bool waiting_for_deadlined =
      !pending_.empty() && (!pending_.front().request || pending_.front().request->deadline_ms != 0);
  if (waiting_for_deadlined && now_ms - last_activity_ms_ > timeout)
    fail("no reply for " + std::to_string(timeout) + " ms");
}

void Backend::close_conn() {
  awaiting_login_ = false;
  std::string().swap(after_login_);
  Conn* conn = conn_;
  conn_ = nullptr;
  conn->owner = nullptr;
  conn->closing = true;
  if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&conn->tcp))) {
    uv_close(reinterpret_cast<uv_handle_t*>(&conn->tcp), [](uv_handle_t* h) {
      auto* c = static_cast<Conn*>(h->data);
      c->tcp_closed = true;
      if (!c->resolving) delete c;
    });
  }
}

void Backend::refused_login(std::string_view reply, bool login) {
  std::string reason(reply.substr(0, reply.find('\r')));
  if (reason.starts_with('-')) reason.erase(0, 1);
  if (!login) {
    // HELLO 3: what the client asked of its connection cannot be had on this node. Reads for a replica go
    // elsewhere (ReplicaReads), as after a refused login.
    const std::string why = "the connection's setup was refused: " + reason;
    if (readonly_) {
      fail(why);
    } else {
      fail(why, errors::setup_refused(name_, reason));
    }
    return;
  }
  const std::string user = login_->user.empty() ? "default" : login_->user;
  if (last_failure_.find(reason) == std::string::npos)
    log_line(LogLevel::kWarning, "%s refused the login as user '%s': %s", name_.c_str(), user.c_str(),
             reason.c_str());
  const std::string why = "the login as user '" + user + "' was refused: " + reason;
  // A replica that reads are sent to may not know a user its master knows (ACL users are each node's own):
  // the reads it had go elsewhere (ReplicaReads), and it is left alone for a while.
  if (readonly_) {
    fail(why);
  } else {
    fail(why, errors::login_refused(name_, user, reason));
  }
}

void Backend::fail(std::string_view why, std::string_view answer) {
  std::deque<Pending> pending;
  pending.swap(pending_);
  last_failure_ = std::string(why);
  // Bytes the kernel took may have reached the server; none beyond them did (see StreamWriter::kernel_total).
  std::uint64_t written = 0;
  if (conn_) {
    written = conn_->out.kernel_total();
    close_conn();
  }
  worker_.stats().backend_failures.add();
  worker_.router().refresh_soon();
  if (on_fail_) on_fail_();
  const std::string cause = name_ + ": " + std::string(why);
  for (auto& p : pending) {
    returned(p);
    if (p.internal) {
      p.internal(nullptr);
      continue;
    }
    RequestPtr& r = p.request;
    if (r->done || r->attempt != p.attempt) continue;
    r->sent = false;
    if (!answer.empty()) {
      worker_.complete(r, std::string(answer));
      continue;
    }
    if (r->watch != Request::Watch::kNone) {
      // A watch dies with its connection: sent again on a new one, the transaction would run unwatched. One
      // that never reached the server answers as if a watched key had changed (its client retries); WATCH's
      // own reply is always OK, as from Redis.
      if (r->watch != Request::Watch::kExec) {
        worker_.complete(r, "+OK\r\n");
      } else {
        worker_.complete(
            r, p.end_offset > written ? std::string(errors::kNilArray) : errors::backend_lost(name_));
      }
      continue;
    }
    // A command whose last byte never reached the kernel was certainly not run (the server got at most part
    // of it, then lost the connection); a read-only one may run twice.
    if (p.end_offset > written || r->idempotent) {
      worker_.retry_later(r, 50, cause);
    } else {
      worker_.stats().errors_backend.add();
      worker_.complete(r, errors::backend_lost(name_));
    }
  }
}

}  // namespace slotshift::proxy
