// The connections a worker keeps for the proxy's own questions to nodes: the admin endpoint's ROUTE check
// (route_check.h) asks the new owner for its CLUSTER NODES once per ROUTE, that is once per batch of a move
// in every proxy of a fleet. A new connection per question cost each proxy a TCP handshake, a login and a
// close per batch (most of a handoff's CPU in a proxy); a kept one costs one command.
//
// What is kept, and what is not:
//   - one connection per (node, login), logged in as the proxy (masteruser/masterauth) and over TLS as the
//     proxy's other connections, apart from the clients' shared ones so that a question never waits behind
//     their commands;
//   - never an answer: each question is sent again, as its own command, and its reply is the one the node
//     sends to it (replies match in order, as on every backend connection). A reply that comes after its
//     asker gave up goes to that asker's callback, never to a later question;
//   - at most kMaxKept connections, the least recently asked closed first, and none that failed: a caller
//     that names many addresses (a mistaken or hostile ROUTE) leaves no more than that open;
//   - none logged in with credentials a reload replaced: the next question logs in anew, so a rotated
//     password shows at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "common/host_port.h"
#include "proxy/backend.h"
#include "proxy/login.h"

namespace slotshift::proxy {

class Worker;

class NodeQuestions {
 public:
  // A ROUTE asks the new owner and, for a node that joined since the last reload, one node the proxy already
  // knows; a rebalance has a few targets, and several proxies' admin threads may ask at once.
  static constexpr std::size_t kMaxKept = 8;

  NodeQuestions(Worker& worker, LoginPtr login) : worker_(worker), login_(std::move(login)) {}
  NodeQuestions(const NodeQuestions&) = delete;
  NodeQuestions& operator=(const NodeQuestions&) = delete;

  // `done` gets the reply's bytes, or null and why there is none. `command` may be `replies` commands sent as
  // one pipeline, answered by their replies' bytes one after the other. A question that fails on a connection
  // kept from earlier (the node closed it meanwhile: a timeout, CLIENT KILL, a restart) is asked once more on
  // a new connection: CLUSTER SLOTS and the like run again harmlessly.
  using Answer = std::function<void(const std::string* reply, const std::string& why)>;
  void ask(const HostPort& node, std::string command, Answer done, int replies = 1);
  // The proxy's login changed (a reload): connections logged in with the old one are closed, now if idle,
  // else after their replies.
  void use_login(LoginPtr login);
  void check_deadlines(std::uint64_t now_ms);
  // Whether a question waits for its reply (check_deadlines has something to look at).
  bool waiting() const;
  // The worker stops: every connection closes and every question waiting gets null.
  void shutdown();
  // Connections kept now, open or not (for tests).
  std::size_t size() const { return kept_.size(); }

 private:
  struct Kept {
    std::unique_ptr<Backend> backend;
    std::uint64_t asked = 0;  // when it was last asked, in questions: the least recently asked goes first
  };
  void ask_on(const std::string& key, Backend* backend, std::string command, int replies, Answer done,
              bool may_retry);
  // After a question: drops `answered` (kept under `key`) if it has no use left, then trims to kMaxKept.
  void settle(const std::string& key, const Backend* answered);
  void drop(std::map<std::string, Kept>::iterator it);

  Worker& worker_;
  LoginPtr login_;
  // By connection_key(login, node): a rotated login makes a new key, so old and new never share a connection.
  std::map<std::string, Kept> kept_;
  std::uint64_t questions_ = 0;  // asked so far
};

}  // namespace slotshift::proxy
