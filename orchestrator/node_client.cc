#include "orchestrator/node_client.h"

#include <hiredis/hiredis.h>

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

std::optional<std::vector<resp::Value>> NodeClient::pipeline(
    const std::vector<std::vector<std::string>>& commands) {
  if (!ctx_) {
    error_ = node_.str() + ": not connected";
    return std::nullopt;
  }
  std::vector<const char*> argv;
  std::vector<std::size_t> lens;
  for (const auto& args : commands) {
    argv.clear();
    lens.clear();
    for (const auto& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    redisAppendCommandArgv(ctx_, static_cast<int>(argv.size()), argv.data(), lens.data());
  }
  std::vector<resp::Value> out;
  out.reserve(commands.size());
  for (std::size_t i = 0; i < commands.size(); ++i) {
    void* raw = nullptr;
    if (redisGetReply(ctx_, &raw) != REDIS_OK || !raw) {
      error_ = node_.str() + ": " + (commands[i].empty() ? std::string() : commands[i][0] + " ") +
               "failed: " + ctx_->errstr;
      redisFree(ctx_);
      ctx_ = nullptr;
      return std::nullopt;
    }
    auto* reply = static_cast<redisReply*>(raw);
    out.push_back(to_value(reply));
    freeReplyObject(reply);
  }
  return out;
}

}  // namespace slotshift
