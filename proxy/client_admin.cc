#include "proxy/client_admin.h"

#include <uv.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <memory>

#include "common/ascii.h"
#include "common/resp.h"
#include "proxy/errors.h"
#include "proxy/session.h"
#include "proxy/worker.h"

namespace slotshift::proxy {
namespace {

bool parse_i64(std::string_view s, std::int64_t& out) {
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size() && !s.empty();
}

// Redis's getClientTypeByName.
bool parse_type(std::string_view name, ClientAdmin::Filter::Type& out) {
  using Type = ClientAdmin::Filter::Type;
  if (iequals(name, "normal")) {
    out = Type::kNormal;
  } else if (iequals(name, "pubsub")) {
    out = Type::kPubSub;
  } else if (iequals(name, "master") || iequals(name, "replica") || iequals(name, "slave")) {
    out = Type::kNone;
  } else {
    return false;
  }
  return true;
}

// One question to every worker, answered on the asking client's worker. Touched on that worker's thread only:
// the other workers send their part back with Worker::post.
struct Gather {
  Worker* origin = nullptr;
  RequestPtr request;
  bool kill = false;
  bool old_form = false;
  bool ordered_ids = false;        // LIST ID: lines in the order the ids were given
  std::vector<std::uint64_t> ids;  // and those ids
  std::size_t waiting = 0;         // workers that have not answered yet
  std::size_t workers = 0;
  std::uint64_t deadline_ms = 0;
  std::vector<std::pair<std::uint64_t, std::string>> lines;  // by client id
  std::uint64_t killed = 0;
  bool done = false;

  void finish() {
    done = true;
    std::string reply;
    if (kill) {
      if (old_form) {
        reply = killed == 0 ? std::string(errors::kNoSuchClient) : std::string("+OK\r\n");
      } else {
        resp::append_integer(reply, static_cast<std::int64_t>(killed));
      }
    } else {
      std::string text;
      if (ordered_ids) {
        // As Redis: one line per id given, in that order, for the ids that name a client.
        for (auto id : ids) {
          const auto it =
              std::find_if(lines.begin(), lines.end(), [id](const auto& l) { return l.first == id; });
          if (it != lines.end()) text += it->second + "\n";
        }
      } else {
        std::sort(lines.begin(), lines.end());
        for (const auto& l : lines)
          text += l.second + "\n";
      }
      resp::append_text(reply, text, request->proto);
    }
    origin->complete(request, std::move(reply));
  }
};

}  // namespace

std::string ClientAdmin::user_of(const Session& s) {
  return s.login_ && !s.login_->user.empty() ? s.login_->user : std::string("default");
}

std::string ClientAdmin::line(const Session& s, std::uint64_t now_ms) {
  int fd = -1;
  uv_os_fd_t os_fd{};
  if (uv_fileno(reinterpret_cast<const uv_handle_t*>(&s.tcp_), &os_fd) == 0) fd = static_cast<int>(os_fd);
  const bool subscribed = s.pubsub_ && s.pubsub_->active();
  std::string flags;
  if (subscribed) flags += 'P';
  if (s.in_multi_) flags += 'x';
  if (s.tracking_) flags += s.tracking_->flags();
  if (s.quit_after_flush_) flags += 'c';
  if (flags.empty()) flags = "N";
  auto n = [](std::uint64_t v) { return std::to_string(v); };
  // Redis 7.0's fields, with the proxy's values where it has one: the output buffer is the proxy's (omem),
  // there is no query buffer kept between commands to speak of (qbuf), and cmd is the last command run.
  return "id=" + n(s.id_) + " addr=" + s.peer_ + " laddr=" + s.laddr_ + " fd=" + std::to_string(fd) +
         " name=" + s.client_name_ + " age=" + n((now_ms - s.created_ms_) / 1000) +
         " idle=" + n((now_ms - s.last_activity_ms_) / 1000) + " flags=" + flags + " db=0" +
         " sub=" + n(s.pubsub_ ? s.pubsub_->channels_.size() : 0) +
         " psub=" + n(s.pubsub_ ? s.pubsub_->patterns_.size() : 0) +
         " ssub=" + n(s.pubsub_ ? s.pubsub_->shards_.size() : 0) +
         " multi=" + (s.in_multi_ ? std::to_string(s.multi_count_) : std::string("-1")) +
         " omem=" + n(s.out_.pending_bytes()) +
         " cmd=" + (s.last_cmd_ ? std::string(s.last_cmd_->name) : std::string("NULL")) +
         " user=" + user_of(s) + " redir=" + (s.tracking_ && s.tracking_->on() ? "0" : "-1") +
         " resp=" + std::to_string(s.proto_) + " worker=" + std::to_string(s.worker_.index());
}

bool ClientAdmin::matches(const Session& s, const Filter& f, std::uint64_t now_ms) {
  if (s.closing_) return false;
  if (f.by_id && std::find(f.ids.begin(), f.ids.end(), s.id_) == f.ids.end()) return false;
  if (f.addr && s.peer_ != *f.addr) return false;
  if (f.laddr && s.laddr_ != *f.laddr) return false;
  if (f.user && user_of(s) != *f.user) return false;
  if (f.type != Filter::Type::kAny) {
    const bool subscribed = s.pubsub_ && s.pubsub_->active();
    if (f.type == Filter::Type::kNone) return false;
    if ((f.type == Filter::Type::kPubSub) != subscribed) return false;
  }
  if (f.maxage_s != 0 && (now_ms - s.created_ms_) / 1000 < f.maxage_s) return false;
  return true;
}

std::string ClientAdmin::parse_list(std::span<const std::string_view> args, Filter& out) {
  // Redis 7.0: CLIENT LIST, CLIENT LIST TYPE t, CLIENT LIST ID id [id ...].
  if (args.size() == 2) return "";
  if (args.size() == 4 && iequals(args[2], "type")) {
    if (!parse_type(args[3], out.type)) return errors::unknown_client_type(args[3]);
    return "";
  }
  if (args.size() > 3 && iequals(args[2], "id")) {
    out.by_id = true;
    for (std::size_t i = 3; i < args.size(); ++i) {
      std::int64_t id = 0;
      if (!parse_i64(args[i], id)) return std::string(errors::kInvalidClientId);
      out.ids.push_back(static_cast<std::uint64_t>(id));
    }
    return "";
  }
  return std::string(errors::kSyntax);
}

std::string ClientAdmin::parse_kill(std::span<const std::string_view> args, bool users_known, Filter& out) {
  if (args.size() < 3) return errors::wrong_arity("client|kill");
  if (args.size() == 3) {
    // The old form: one address, and a client may kill itself with it.
    out.old_form = true;
    out.addr = std::string(args[2]);
    out.skipme = false;
    return "";
  }
  if (args.size() % 2 != 0) return std::string(errors::kSyntax);
  for (std::size_t i = 2; i + 1 < args.size(); i += 2) {
    const std::string_view option = args[i], value = args[i + 1];
    if (iequals(option, "id")) {
      std::int64_t id = 0;
      if (!parse_i64(value, id) || id < 1) return std::string(errors::kClientIdPositive);
      out.by_id = true;
      out.ids = {static_cast<std::uint64_t>(id)};
    } else if (iequals(option, "type")) {
      if (!parse_type(value, out.type)) return errors::unknown_client_type(value);
    } else if (iequals(option, "addr")) {
      out.addr = std::string(value);
    } else if (iequals(option, "laddr")) {
      out.laddr = std::string(value);
    } else if (iequals(option, "user")) {
      // Without ACL pass-through the only user is the default one; with it, users are the cluster's and a
      // name the proxy has not seen simply matches no client.
      if (users_known && value != "default") return errors::no_such_user(value);
      out.user = std::string(value);
    } else if (iequals(option, "skipme")) {
      if (iequals(value, "yes")) {
        out.skipme = true;
      } else if (iequals(value, "no")) {
        out.skipme = false;
      } else {
        return std::string(errors::kSyntax);
      }
    } else if (iequals(option, "maxage")) {
      // Redis 7.4's filter: clients connected for at least this many seconds.
      std::int64_t age = 0;
      if (!parse_i64(value, age) || age < 0) return std::string(errors::kNotInteger);
      out.maxage_s = static_cast<std::uint64_t>(age);
    } else {
      return std::string(errors::kSyntax);
    }
  }
  return "";
}

void ClientAdmin::command(Session& session, std::span<const std::string_view> args, bool kill) {
  Worker& origin = session.worker_;
  const Config& config = origin.config();
  if (kill && !config.allow_admin_commands) {
    origin.stats().errors_refused.add();
    session.answer("client", errors::refused_admin_local("client|kill"));
    return;
  }
  Filter filter;
  std::string error = kill ? parse_kill(args, config.client_auth != Config::ClientAuth::kAcl, filter)
                           : parse_list(args, filter);
  if (!error.empty()) {
    session.answer("client", std::move(error));
    return;
  }
  auto request = session.new_request("client", nullptr);
  session.enqueue(request);
  auto g = std::make_shared<Gather>();
  g->origin = &origin;
  g->request = request;
  g->kill = kill;
  g->old_form = filter.old_form;
  g->ordered_ids = !kill && filter.by_id;
  g->ids = filter.ids;
  g->deadline_ms = request->deadline_ms;
  const std::uint64_t caller = session.id_;
  if (kill && !filter.skipme && matches(session, filter, origin.now_ms())) {
    // As Redis: a client that kills itself gets its reply, then is closed; nothing it sent after is run.
    ++g->killed;
    session.quit_after_flush_ = true;
    session.pause_or_resume_reading();
  }
  const auto& workers = origin.proxy().workers();
  g->workers = workers.size();
  g->waiting = workers.size();
  for (const auto& w : workers) {
    Worker* here = w.get();
    Worker* back = &origin;
    const bool posted = here->post([g, here, back, filter, caller, kill] {
      // On `here`'s thread: its own sessions only.
      std::vector<std::pair<std::uint64_t, std::string>> lines;
      std::uint64_t killed = 0;
      const std::uint64_t now = here->now_ms();
      for (Session* s : std::vector<Session*>(here->sessions_.begin(), here->sessions_.end())) {
        if (!matches(*s, filter, now)) continue;
        if (kill) {
          if (s->id_ == caller) continue;  // decided by the caller's own worker, above
          s->close();
          ++killed;
        } else {
          lines.emplace_back(s->id_, line(*s, now));
        }
      }
      back->post([g, lines = std::move(lines), killed]() mutable {
        if (g->done) return;
        for (auto& l : lines)
          g->lines.push_back(std::move(l));
        g->killed += killed;
        if (--g->waiting == 0) g->finish();
      });
    });
    if (!posted) --g->waiting;  // a worker that is stopping has no clients left to speak of
  }
  if (g->waiting == 0) {
    g->finish();
    return;
  }
  origin.await_workers([g](std::uint64_t now) {
    if (g->done) return false;
    if (now < g->deadline_ms) return true;
    g->done = true;
    g->origin->stats().errors_timeout.add();
    g->origin->complete(g->request,
                        errors::timeout(std::to_string(g->waiting) + " of " + std::to_string(g->workers) +
                                        " worker threads did not answer about their clients"));
    return false;
  });
}

}  // namespace slotshift::proxy
