// The integration-test fixture: a real Redis Cluster on free loopback ports in a temporary directory, started
// and stopped by deploy/local/cluster.sh (the same script the demo uses), plus a small synchronous hiredis
// client.
#pragma once

#include <hiredis/hiredis.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace slotshift::test {

struct Endpoint {
  std::string host;
  int port = 0;
  std::string str() const { return host + ":" + std::to_string(port); }
};

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

// A blocking connection to one node. Every call has a deadline (10 s by default); a failure throws
// std::runtime_error with the node and the command in the message.
class Connection {
 public:
  explicit Connection(const Endpoint& endpoint, int timeout_ms = 10000);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Sends one command (binary-safe arguments) and waits for its reply.
  Reply command(const std::vector<std::string>& args);
  Reply command(std::initializer_list<std::string_view> args);
  // Pipelines many commands, then reads every reply in order.
  std::vector<Reply> pipeline(const std::vector<std::vector<std::string>>& commands);
  // Sends raw bytes and returns exactly the bytes of the next `replies` complete RESP replies, as the server
  // sent them (for parser tests against real server output; works for RESP3 after HELLO 3 too).
  std::string raw(std::string_view bytes, int replies = 1);

  const Endpoint& endpoint() const { return endpoint_; }
  redisContext* context() { return ctx_; }

 private:
  Endpoint endpoint_;
  redisContext* ctx_ = nullptr;
};

// Starts a cluster of `masters` masters with `replicas` replicas each and waits until every node reports
// cluster_state:ok. The destructor stops every server and removes the directory. If the test process dies,
// the script's watchdog (it watches this process's pid) stops the servers anyway.
class LocalCluster {
 public:
  explicit LocalCluster(int masters = 3, int replicas = 0);
  ~LocalCluster();
  LocalCluster(const LocalCluster&) = delete;
  LocalCluster& operator=(const LocalCluster&) = delete;

  const std::vector<Endpoint>& nodes() const { return nodes_; }  // every node, as started
  std::vector<Endpoint> masters() const;                         // current masters, asked from the cluster
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<Endpoint> nodes_;
};

// One cluster shared by every test case of the executable: started on first use, stopped at exit.
LocalCluster& shared_cluster(int masters = 3, int replicas = 1);

// Runs a shell command, returns its stdout; throws if it exits non-zero.
std::string run(const std::string& command);

// Runs a shell command and returns its exit code and stdout, whatever the exit code.
struct RunResult {
  int exit_code = -1;
  std::string out;
};
RunResult run_capture(const std::string& command);

}  // namespace slotshift::test
