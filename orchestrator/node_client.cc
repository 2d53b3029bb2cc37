#include "orchestrator/node_client.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>
#include <thread>
#include <utility>

namespace slotshift {
namespace {

// The largest slice of queued commands written under one deadline: a long pipeline may take longer than the
// timeout to send as long as the node keeps taking it.
constexpr std::size_t kWriteSlice = 1 << 20;
constexpr std::size_t kReadChunk = 64 * 1024;

// hiredis, which these connections used before, gave a null array (*-1) as a nil reply, as it did a null bulk
// string; callers test `null`, and some the type too, so they see the same here.
void as_hiredis_did(resp::Value& v) {
  if (v.type == resp::Type::kArray && v.null) {
    v.type = resp::Type::kBulkString;
    return;
  }
  for (auto& e : v.elements)
    as_hiredis_did(e);
}

}  // namespace

bool NodeClient::connect(const HostPort& node, std::chrono::milliseconds timeout,
                         const Credentials& credentials) {
  node_ = node;
  timeout_ = timeout;
  out_.clear();
  in_.clear();
  in_offset_ = 0;
  scanner_.reset();
  replies_ = 0;
  error_.clear();
  if (!socket_.connect(node, Clock::now() + timeout, credentials.tls.get())) {
    error_ = socket_.error();
    return false;
  }
  if (!credentials.password.empty()) {
    auto r = credentials.user.empty() ? command({"AUTH", credentials.password})
                                      : command({"AUTH", credentials.user, credentials.password});
    if (!r || r->is_error()) {
      if (r) error_ = node.str() + ": AUTH refused: " + r->str;
      socket_.close();
      return false;
    }
  }
  if (!credentials.client_name.empty()) {
    auto r = command({"CLIENT", "SETNAME", credentials.client_name});
    // A node that wants a password none was given for says so again at the first command, with the hint
    // its caller gives: only a refusal of the name itself fails here.
    if (!r || (r->is_error() && !r->str.starts_with("NOAUTH"))) {
      if (r) error_ = node.str() + ": CLIENT SETNAME refused: " + r->str;
      socket_.close();
      return false;
    }
  }
  // After the name: a move that took the lease over after this check closes the connection (move_lease.h).
  if (auto why = refused_by_lease(credentials); !why.empty()) {
    error_ = node.str() + ": " + why;
    socket_.close();
    return false;
  }
  return true;
}

std::string refused_by_lease(const Credentials& credentials) {
  return credentials.lease_lost ? credentials.lease_lost() : std::string();
}

void NodeClient::fail(const std::string& what, std::string reason) {
  // A TLS port drops a plain client that sent a command, without a word: Redis closes the connection when
  // the handshake fails, with our bytes unread, so the kernel resets it. On the first exchange of a plain
  // connection that is worth a hint.
  if (replies_ == 0 && !socket_.is_tls() &&
      (reason.find("closed by the server") != std::string::npos ||
       reason.find(std::strerror(ECONNRESET)) != std::string::npos ||
       reason.find(std::strerror(EPIPE)) != std::string::npos))
    reason += " (if the node accepts TLS connections only, give --tls)";
  error_ = node_.str() + ": " + (what.empty() ? "" : what + " failed: ") + std::move(reason);
  socket_.close();
  out_.clear();
  in_.clear();
  in_offset_ = 0;
  scanner_.reset();
}

std::optional<resp::Value> NodeClient::command(const std::vector<std::string>& args) {
  auto replies = pipeline({args});
  if (!replies) return std::nullopt;
  return std::move(replies->front());
}

std::optional<resp::Value> NodeClient::command_when_loaded(const std::vector<std::string>& args,
                                                           std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    auto reply = command(args);
    if (!reply || !is_loading(*reply) || std::chrono::steady_clock::now() >= deadline) return reply;
    std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
        std::chrono::milliseconds(50), deadline - std::chrono::steady_clock::now()));
  }
}

void NodeClient::append(const std::vector<std::string>& args) {
  std::vector<std::string_view> views(args.begin(), args.end());
  resp::append_command(out_, views);
}

bool NodeClient::flush() {
  std::string_view rest(out_);
  while (!rest.empty()) {
    const auto slice = rest.substr(0, kWriteSlice);
    if (!socket_.write_all(slice, Clock::now() + timeout_)) {
      fail("", socket_.reason());
      return false;
    }
    rest.remove_prefix(slice.size());
  }
  out_.clear();
  return true;
}

std::optional<resp::Value> NodeClient::read_reply(const std::string& what) {
  if (!socket_.is_open()) {
    if (error_.empty()) error_ = node_.str() + ": not connected";
    return std::nullopt;
  }
  // The timeout counts from the last byte received, as it did with hiredis (a socket timeout per read): a
  // large reply that keeps coming is not cut short.
  auto deadline = Clock::now() + timeout_;
  for (;;) {
    if (in_offset_ < in_.size()) {
      const std::string_view rest = std::string_view(in_).substr(in_offset_);
      const auto status = scanner_.scan(rest);
      if (status == resp::Status::kComplete) {
        auto value = resp::decode(rest.substr(0, scanner_.size()));
        as_hiredis_did(value);
        in_offset_ += scanner_.size();
        scanner_.reset();
        if (in_offset_ == in_.size()) {
          in_.clear();
          in_offset_ = 0;
        }
        ++replies_;
        return value;
      }
      if (status == resp::Status::kError) {
        // A TLS record (a handshake or an alert) where a reply should be: a plain connection to a port that
        // speaks TLS only.
        const unsigned char first = static_cast<unsigned char>(rest[0]);
        if (replies_ == 0 && (first == 0x15 || first == 0x16))
          fail(what, "the node answered with TLS, not RESP: it speaks TLS on this port (give --tls)");
        else
          fail(what, "malformed reply: " + scanner_.error());
        return std::nullopt;
      }
    }
    if (in_offset_ > 0) {
      in_.erase(0, in_offset_);
      in_offset_ = 0;
    }
    const std::size_t old = in_.size();
    const std::size_t want =
        std::max(kReadChunk, scanner_.size_hint() > old ? scanner_.size_hint() - old : 0);
    in_.resize(old + want);
    const long n = socket_.read_some(in_.data() + old, want, deadline);
    in_.resize(old + static_cast<std::size_t>(std::max(n, 0L)));
    if (n > 0) {
      deadline = Clock::now() + timeout_;
      continue;
    }
    fail(what, socket_.reason());
    return std::nullopt;
  }
}

bool NodeFanout::connect(const HostPort& node, std::chrono::milliseconds timeout,
                         const Credentials& credentials, std::size_t connections, const std::string& name) {
  clients_.clear();
  clients_.resize(std::max<std::size_t>(connections, 1));
  for (auto& c : clients_) {
    if (!c.connect(node, timeout, credentials)) {
      error_ = c.error();
      return false;
    }
    // A move's connections keep its name first (move_lease.h), this one's role after it.
    if (!name.empty())
      c.command({"CLIENT", "SETNAME",
                 credentials.client_name.empty() ? name : credentials.client_name + ":" + name});
  }
  return true;
}

std::optional<std::vector<std::vector<resp::Value>>> NodeFanout::run(
    const std::vector<std::vector<std::vector<std::string>>>& groups) {
  if (groups.empty()) return std::vector<std::vector<resp::Value>>{};
  if (clients_.empty()) {
    error_ = "not connected";
    return std::nullopt;
  }
  // A failed connection does not cut the others short: every command sent on a connection that is still up
  // has had its reply (and so has run) when this returns. A caller that then asks the node what it did (a
  // claim that failed part way) must not be answered before commands still in flight have run: on Valkey 8
  // and later a SETSLOT takes effect only once the node's replicas have it, well after it was sent.
  const std::size_t n = std::min(clients_.size(), groups.size());
  error_.clear();
  std::vector<bool> failed(n, false);
  for (std::size_t i = 0; i < groups.size(); ++i)
    for (const auto& cmd : groups[i])
      clients_[i % n].append(cmd);
  for (std::size_t k = 0; k < n; ++k)
    if (!clients_[k].flush()) {
      failed[k] = true;
      if (error_.empty()) error_ = clients_[k].error();
    }
  // Connection k carries groups k, k+n, k+2n, ...: read them in that order.
  std::vector<std::vector<resp::Value>> out(groups.size());
  for (std::size_t k = 0; k < n; ++k)
    for (std::size_t i = k; i < groups.size() && !failed[k]; i += n)
      for (const auto& cmd : groups[i]) {
        auto v = clients_[k].read_reply(cmd.empty() ? std::string() : cmd[0]);
        if (!v) {
          failed[k] = true;
          if (error_.empty()) error_ = clients_[k].error();
          break;
        }
        out[i].push_back(std::move(*v));
      }
  if (!error_.empty()) return std::nullopt;
  return out;
}

std::optional<std::vector<resp::Value>> NodeClient::pipeline(
    const std::vector<std::vector<std::string>>& commands) {
  if (!socket_.is_open()) {
    error_ = node_.str() + ": not connected";
    return std::nullopt;
  }
  for (const auto& args : commands)
    append(args);
  if (!flush()) return std::nullopt;
  std::vector<resp::Value> out;
  out.reserve(commands.size());
  for (const auto& args : commands) {
    auto v = read_reply(args.empty() ? std::string() : args[0]);
    if (!v) return std::nullopt;
    out.push_back(std::move(*v));
  }
  return out;
}

std::vector<ClientSeen> clients_in(const std::string& client_list) {
  std::vector<ClientSeen> out;
  std::istringstream lines(client_list);
  for (std::string line; std::getline(lines, line);) {
    ClientSeen c;
    std::istringstream fields(line);
    for (std::string f; fields >> f;) {
      if (f.starts_with("id=")) c.id = f.substr(3);
      if (f.starts_with("addr=")) c.addr = f.substr(5);
      if (f.starts_with("name=")) c.name = f.substr(5);
    }
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace slotshift
