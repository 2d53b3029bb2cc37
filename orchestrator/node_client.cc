#include "orchestrator/node_client.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <thread>
#include <utility>

namespace slotshift {
namespace {

// hiredis 0.14 (Debian 12) speaks RESP2 only; its replies map onto resp::Value one to one.
resp::Value to_value(const redisReply* r) {
  resp::Value v;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      v.type = resp::Type::kBulkString;
      v.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STATUS:
      v.type = resp::Type::kSimpleString;
      v.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ERROR:
      v.type = resp::Type::kError;
      v.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      v.type = resp::Type::kInteger;
      v.integer = r->integer;
      break;
    case REDIS_REPLY_NIL:
      v.type = resp::Type::kBulkString;
      v.null = true;
      break;
    case REDIS_REPLY_ARRAY:
      v.type = resp::Type::kArray;
      v.elements.reserve(r->elements);
      for (std::size_t i = 0; i < r->elements; ++i)
        v.elements.push_back(to_value(r->element[i]));
      break;
    default:
      v.type = resp::Type::kError;
      v.str = "unexpected reply type " + std::to_string(r->type);
  }
  return v;
}

timeval to_timeval(std::chrono::milliseconds ms) {
  return timeval{static_cast<time_t>(ms.count() / 1000),
                 static_cast<suseconds_t>((ms.count() % 1000) * 1000)};
}

}  // namespace

NodeClient::~NodeClient() {
  if (ctx_) redisFree(ctx_);
}

NodeClient::NodeClient(NodeClient&& other) noexcept
    : node_(std::move(other.node_)),
      ctx_(std::exchange(other.ctx_, nullptr)),
      error_(std::move(other.error_)) {}

NodeClient& NodeClient::operator=(NodeClient&& other) noexcept {
  if (this != &other) {
    if (ctx_) redisFree(ctx_);
    node_ = std::move(other.node_);
    ctx_ = std::exchange(other.ctx_, nullptr);
    error_ = std::move(other.error_);
  }
  return *this;
}

bool NodeClient::connect(const HostPort& node, std::chrono::milliseconds timeout,
                         const Credentials& credentials) {
  node_ = node;
  if (ctx_) redisFree(ctx_);
  ctx_ = redisConnectWithTimeout(node.host.c_str(), node.port, to_timeval(timeout));
  if (!ctx_ || ctx_->err) {
    error_ = node.str() + ": " + (ctx_ ? ctx_->errstr : "out of memory");
    if (ctx_) redisFree(ctx_);
    ctx_ = nullptr;
    return false;
  }
  redisSetTimeout(ctx_, to_timeval(timeout));
  if (credentials.password.empty()) return true;
  auto r = credentials.user.empty() ? command({"AUTH", credentials.password})
                                    : command({"AUTH", credentials.user, credentials.password});
  if (r && !r->is_error()) return true;
  if (r) error_ = node.str() + ": AUTH refused: " + r->str;
  redisFree(ctx_);
  ctx_ = nullptr;
  return false;
}

std::optional<resp::Value> NodeClient::command(const std::vector<std::string>& args) {
  auto replies = pipeline({args});
  if (!replies) return std::nullopt;
  return std::move(replies->front());
}

bool NodeClient::usable() const {
  return ctx_ && ctx_->err == 0;
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
  std::vector<const char*> argv;
  std::vector<std::size_t> lens;
  for (const auto& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  redisAppendCommandArgv(ctx_, static_cast<int>(argv.size()), argv.data(), lens.data());
}

bool NodeClient::flush() {
  int done = 0;
  while (!done)
    if (redisBufferWrite(ctx_, &done) != REDIS_OK) {
      error_ = node_.str() + ": write failed: " + ctx_->errstr;
      redisFree(ctx_);
      ctx_ = nullptr;
      return false;
    }
  return true;
}

std::optional<resp::Value> NodeClient::read_reply(const std::string& what) {
  void* raw = nullptr;
  if (redisGetReply(ctx_, &raw) != REDIS_OK || !raw) {
    error_ = node_.str() + ": " + what + " failed: " + ctx_->errstr;
    redisFree(ctx_);
    ctx_ = nullptr;
    return std::nullopt;
  }
  auto* reply = static_cast<redisReply*>(raw);
  auto value = to_value(reply);
  freeReplyObject(reply);
  return value;
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
    if (!name.empty()) c.command({"CLIENT", "SETNAME", name});
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
  if (!ctx_) {
    error_ = node_.str() + ": not connected";
    return std::nullopt;
  }
  for (const auto& args : commands)
    append(args);
  std::vector<resp::Value> out;
  out.reserve(commands.size());
  for (const auto& args : commands) {
    auto v = read_reply(args.empty() ? std::string() : args[0]);
    if (!v) return std::nullopt;
    out.push_back(std::move(*v));
  }
  return out;
}

}  // namespace slotshift
