#include "proxy/node_questions.h"

#include <iterator>
#include <vector>

#include "proxy/worker.h"

namespace slotshift::proxy {

void NodeQuestions::ask(const HostPort& node, std::string command, Answer done, int replies) {
  const std::string key = connection_key(login_, node);
  Kept& kept = kept_[key];
  if (!kept.backend) kept.backend = std::make_unique<Backend>(worker_, node, login_);
  kept.asked = ++questions_;
  // `kept` may be gone after this: a connection that cannot even start answers (and is dropped) at once.
  ask_on(key, kept.backend.get(), std::move(command), replies, std::move(done), true);
  settle(key, nullptr);
}

void NodeQuestions::ask_on(const std::string& key, Backend* backend, std::string command, int replies,
                           Answer done, bool may_retry) {
  // Only a connection that was open before the question was asked may have been closed by the node unseen
  // (its close not read yet): a failure there says nothing about the node now, and a new connection asks
  // again. A connection opened for this question that fails is the answer.
  const bool reused = may_retry && backend->connected();
  std::string again = reused ? command : std::string();
  auto answered = [this, key, backend, reused, replies, again = std::move(again),
                   done = std::move(done)](const std::string* reply) mutable {
    // Not on a connection dropped meanwhile (an earlier question's new connection failed at once, in this
    // same failure): it is retired, and nothing would answer there.
    const auto it = kept_.find(key);
    const bool still_kept = it != kept_.end() && it->second.backend.get() == backend;
    if (!reply && reused && still_kept && !worker_.stopping()) {
      ask_on(key, backend, std::move(again), replies, std::move(done), false);
      return;
    }
    done(reply, reply ? std::string() : backend->last_failure());
    settle(key, backend);
  };
  backend->send_internal(std::move(command), std::move(answered), replies);
}

void NodeQuestions::settle(const std::string& key, const Backend* answered) {
  if (answered) {
    const auto it = kept_.find(key);
    // A failed connection is not kept (a wrong address must not take a place), nor one that logs in with
    // credentials a reload replaced; either may still carry questions asked after this one.
    if (it != kept_.end() && it->second.backend.get() == answered && answered->inflight() == 0 &&
        (!answered->connected() || answered->login() != login_))
      drop(it);
  }
  while (kept_.size() > kMaxKept) {
    auto oldest = kept_.end();
    for (auto it = kept_.begin(); it != kept_.end(); ++it) {
      if (it->second.backend->inflight() == 0 &&
          (oldest == kept_.end() || it->second.asked < oldest->second.asked))
        oldest = it;
    }
    if (oldest == kept_.end()) break;  // every one waits for a reply: trimmed after the replies
    drop(oldest);
  }
}

void NodeQuestions::drop(std::map<std::string, Kept>::iterator it) {
  // Freed at the next tick: this may run inside a callback of that very connection.
  it->second.backend->shutdown();
  worker_.retire(std::move(it->second.backend));
  kept_.erase(it);
}

void NodeQuestions::use_login(LoginPtr login) {
  login_ = std::move(login);
  for (auto it = kept_.begin(); it != kept_.end();) {
    const auto next = std::next(it);
    if (it->second.backend->login() != login_ && it->second.backend->inflight() == 0) drop(it);
    it = next;
  }
}

void NodeQuestions::check_deadlines(std::uint64_t now_ms) {
  // A connection that fails here answers its questions, which may drop it from kept_ (retired, not freed):
  // the walk goes over a copy.
  std::vector<Backend*> backends;
  for (auto& [key, kept] : kept_)
    backends.push_back(kept.backend.get());
  for (Backend* b : backends)
    b->check_deadlines(now_ms);
}

bool NodeQuestions::waiting() const {
  for (const auto& [key, kept] : kept_)
    if (kept.backend->inflight() > 0) return true;
  return false;
}

void NodeQuestions::shutdown() {
  std::map<std::string, Kept> kept;
  kept.swap(kept_);
  for (auto& [key, k] : kept) {
    k.backend->shutdown();
    worker_.retire(std::move(k.backend));
  }
}

}  // namespace slotshift::proxy
