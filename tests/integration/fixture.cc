#include "tests/integration/fixture.h"

#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common/resp.h"

namespace slotshift::test {
namespace {

std::string describe(const redisContext* ctx) {
  return ctx ? std::string(ctx->errstr) : std::string("cannot allocate a connection");
}

std::string first_words(const std::vector<std::string>& args) {
  std::string out;
  for (std::size_t i = 0; i < args.size() && i < 3; ++i)
    out += (i ? " " : "") + args[i].substr(0, 40);
  return out;
}

Endpoint parse_endpoint(const std::string& s) {
  const auto colon = s.rfind(':');
  if (colon == std::string::npos) throw std::runtime_error("bad endpoint '" + s + "'");
  return Endpoint{s.substr(0, colon), std::stoi(s.substr(colon + 1))};
}

}  // namespace

RunResult run_capture(const std::string& command) {
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) throw std::runtime_error("cannot run: " + command);
  RunResult result;
  std::array<char, 4096> buf{};
  std::size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0)
    result.out.append(buf.data(), n);
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

std::string run(const std::string& command) {
  auto result = run_capture(command);
  if (result.exit_code != 0) {
    throw std::runtime_error("command failed (exit " + std::to_string(result.exit_code) + "): " + command);
  }
  return result.out;
}

Connection::Connection(const Endpoint& endpoint, int timeout_ms) : endpoint_(endpoint) {
  const timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  ctx_ = redisConnectWithTimeout(endpoint.host.c_str(), endpoint.port, tv);
  if (!ctx_ || ctx_->err) {
    const auto why = describe(ctx_);
    if (ctx_) redisFree(ctx_);
    throw std::runtime_error("cannot connect to " + endpoint.str() + ": " + why);
  }
  redisSetTimeout(ctx_, tv);
}

Connection::~Connection() {
  redisFree(ctx_);
}

Reply Connection::command(const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  std::vector<std::size_t> lens;
  for (const auto& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  auto* r = static_cast<redisReply*>(
      redisCommandArgv(ctx_, static_cast<int>(argv.size()), argv.data(), lens.data()));
  if (!r)
    throw std::runtime_error(endpoint_.str() + ": '" + first_words(args) + "' failed: " + describe(ctx_));
  return Reply(r);
}

Reply Connection::command(std::initializer_list<std::string_view> args) {
  std::vector<std::string> v;
  for (auto a : args)
    v.emplace_back(a);
  return command(v);
}

std::vector<Reply> Connection::pipeline(const std::vector<std::vector<std::string>>& commands) {
  for (const auto& args : commands) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    if (redisAppendCommandArgv(ctx_, static_cast<int>(argv.size()), argv.data(), lens.data()) != REDIS_OK) {
      throw std::runtime_error(endpoint_.str() + ": cannot queue '" + first_words(args) +
                               "': " + describe(ctx_));
    }
  }
  std::vector<Reply> replies;
  replies.reserve(commands.size());
  for (std::size_t i = 0; i < commands.size(); ++i) {
    void* r = nullptr;
    if (redisGetReply(ctx_, &r) != REDIS_OK || !r) {
      throw std::runtime_error(endpoint_.str() + ": pipeline reply " + std::to_string(i) + " of " +
                               std::to_string(commands.size()) + " failed: " + describe(ctx_));
    }
    replies.emplace_back(static_cast<redisReply*>(r));
  }
  return replies;
}

std::string Connection::raw(std::string_view bytes, int replies) {
  // hiredis must have nothing buffered in either direction for this to be safe; callers use raw() on its own.
  std::size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = ::send(ctx_->fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw std::runtime_error(endpoint_.str() + ": send failed: " + std::strerror(errno));
    sent += static_cast<std::size_t>(n);
  }
  std::string in;
  std::size_t done = 0;  // bytes of `in` that belong to complete replies
  resp::Scanner scanner(resp::Scanner::Mode::kReply);
  for (int got = 0; got < replies;) {
    const auto status = scanner.scan(std::string_view(in).substr(done));
    if (status == resp::Status::kError) {
      throw std::runtime_error(endpoint_.str() + ": server sent invalid RESP: " + scanner.error());
    }
    if (status == resp::Status::kComplete) {
      done += scanner.size();
      scanner.reset();
      ++got;
      continue;
    }
    std::array<char, 64 * 1024> buf{};
    const ssize_t n = ::recv(ctx_->fd, buf.data(), buf.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      throw std::runtime_error(endpoint_.str() + ": connection closed or timed out while reading a reply");
    }
    in.append(buf.data(), static_cast<std::size_t>(n));
  }
  if (done != in.size())
    throw std::runtime_error(endpoint_.str() + ": more bytes than the replies asked for");
  return in;
}

LocalCluster::LocalCluster(int masters, int replicas) {
  const std::string cmd = std::string(SLOTSHIFT_CLUSTER_SCRIPT) + " start --masters " +
                          std::to_string(masters) + " --replicas " + std::to_string(replicas) +
                          " --owner-pid " + std::to_string(::getpid());
  const auto out = run(cmd);
  std::size_t pos = 0;
  while (pos < out.size()) {
    auto end = out.find('\n', pos);
    if (end == std::string::npos) end = out.size();
    const auto line = out.substr(pos, end - pos);
    pos = end + 1;
    if (line.rfind("SLOTSHIFT_CLUSTER_DIR=", 0) == 0)
      dir_ = line.substr(std::strlen("SLOTSHIFT_CLUSTER_DIR="));
    if (line.rfind("SLOTSHIFT_CLUSTER_NODES=", 0) == 0) {
      auto list = line.substr(std::strlen("SLOTSHIFT_CLUSTER_NODES="));
      std::size_t p = 0;
      while (p <= list.size()) {
        auto comma = list.find(',', p);
        if (comma == std::string::npos) comma = list.size();
        nodes_.push_back(parse_endpoint(list.substr(p, comma - p)));
        p = comma + 1;
      }
    }
  }
  if (dir_.empty() || nodes_.empty()) throw std::runtime_error("cluster.sh start printed no cluster: " + out);
}

LocalCluster::~LocalCluster() {
  try {
    run(std::string(SLOTSHIFT_CLUSTER_SCRIPT) + " stop --dir '" + dir_ + "' 2>/dev/null");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fixture: stopping the cluster in %s failed: %s\n", dir_.c_str(), e.what());
  }
}

std::vector<Endpoint> LocalCluster::masters() const {
  std::vector<Endpoint> out;
  for (const auto& node : nodes_) {
    try {
      Connection c(node);
      auto r = c.command({"ROLE"});
      if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 && std::string(r->element[0]->str) == "master") {
        out.push_back(node);
      }
    } catch (const std::exception&) {
      // a stopped node is simply not a master
    }
  }
  return out;
}

LocalCluster& shared_cluster(int masters, int replicas) {
  // Destroyed at exit, which stops the servers; the watchdog covers an abnormal exit.
  static LocalCluster cluster(masters, replicas);
  return cluster;
}

}  // namespace slotshift::test
