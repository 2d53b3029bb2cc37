// HttpFanout against scripted HTTP servers on loopback (no proxy, no Redis): many endpoints answered in one
// call, kept connections reused, a silent endpoint given up at the deadline without holding up the others, a
// refused one, and a kept connection the server closed meanwhile.
#include "orchestrator/http_fanout.h"

#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using namespace slotshift;
using namespace std::chrono_literals;

namespace {

// A one-thread HTTP server that reads requests (Content-Length bodies) and, by its mode, answers each with
// 200 and the request's path and body, never answers, or answers and then closes the connection without
// saying so (as a server does at its idle limit).
class ScriptedHttp {
 public:
  enum class Mode { kAnswer, kSilent, kAnswerThenClose };

  explicit ScriptedHttp(Mode mode) : mode_(mode) {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(listener_, 64) == 0);
    socklen_t len = sizeof addr;
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~ScriptedHttp() {
    stop_ = true;
    thread_.join();
    for (auto& [fd, in] : connections_)
      ::close(fd);
    ::close(listener_);
  }
  HostPort address() const { return {"127.0.0.1", port_}; }
  int accepted() const { return accepted_; }
  int requests() const { return requests_; }

 private:
  void run() {
    while (!stop_) {
      std::vector<pollfd> fds{{listener_, POLLIN, 0}};
      for (auto& [fd, in] : connections_)
        fds.push_back({fd, POLLIN, 0});
      if (::poll(fds.data(), fds.size(), 20) <= 0) continue;
      if (fds[0].revents) {
        const int fd = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0) {
          connections_[fd];
          ++accepted_;
        }
      }
      for (std::size_t i = 1; i < fds.size(); ++i) {
        if (!fds[i].revents) continue;
        const int fd = fds[i].fd;
        char buf[4096];
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) {
          ::close(fd);
          connections_.erase(fd);
          continue;
        }
        auto& in = connections_[fd];
        in.append(buf, static_cast<std::size_t>(n));
        const auto blank = in.find("\r\n\r\n");
        if (blank == std::string::npos) continue;
        const auto cl = in.find("Content-Length: ");
        const auto length = std::stoul(in.substr(cl + 16));
        if (in.size() < blank + 4 + length) continue;
        ++requests_;
        const std::string path = in.substr(5, in.find(' ', 5) - 5);
        const std::string body = path + " " + in.substr(blank + 4, length);
        in.erase(0, blank + 4 + length);
        if (mode_ == Mode::kSilent) continue;
        const std::string reply =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nKeep-Alive: timeout=5, "
            "max=100\r\nContent-Length: " +
            std::to_string(body.size()) + "\r\n\r\n" + body;
        (void)::send(fd, reply.data(), reply.size(), MSG_NOSIGNAL);
        if (mode_ == Mode::kAnswerThenClose) {
          ::close(fd);
          connections_.erase(fd);
        }
      }
    }
  }

  Mode mode_;
  int listener_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0}, requests_{0};
  std::map<int, std::string> connections_;
  std::thread thread_;
};

}  // namespace

TEST_CASE("one call reaches every endpoint, and the next reuses the connections") {
  std::vector<std::unique_ptr<ScriptedHttp>> servers;
  std::vector<HostPort> to;
  for (int i = 0; i < 40; ++i) {
    servers.push_back(std::make_unique<ScriptedHttp>(ScriptedHttp::Mode::kAnswer));
    to.push_back(servers.back()->address());
  }
  HttpFanout fanout("", 500ms);
  for (int call = 0; call < 3; ++call) {
    const auto answers = fanout.post(to, "/v1/slots/hold", "{\"n\":" + std::to_string(call) + "}",
                                     HttpFanout::Clock::now() + 2s);
    REQUIRE(answers.size() == to.size());
    for (const auto& a : answers) {
      CHECK(a.status == 200);
      CHECK(a.body == "/v1/slots/hold {\"n\":" + std::to_string(call) + "}");
    }
  }
  CHECK(fanout.connects() == to.size());
  for (const auto& s : servers) {
    CHECK(s->accepted() == 1);
    CHECK(s->requests() == 3);
  }
}

TEST_CASE("a silent endpoint costs the deadline, not more, and the others answer meanwhile") {
  ScriptedHttp fast1(ScriptedHttp::Mode::kAnswer), silent(ScriptedHttp::Mode::kSilent),
      fast2(ScriptedHttp::Mode::kAnswer);
  HttpFanout fanout("", 500ms);
  const auto t0 = HttpFanout::Clock::now();
  auto answers = fanout.post({fast1.address(), silent.address(), fast2.address()}, "/x", "{}", t0 + 150ms);
  const auto took = HttpFanout::Clock::now() - t0;
  CHECK(took >= 150ms);
  CHECK(took < 400ms);
  CHECK(answers[0].status == 200);
  CHECK(answers[1].status == 0);
  CHECK(answers[1].error == "no reply by the deadline");
  CHECK(answers[2].status == 200);
  // Its connection was closed (a late reply must not answer the next request): the next call makes another.
  const auto before = fanout.connects();
  answers = fanout.post({fast1.address(), silent.address()}, "/x", "{}", HttpFanout::Clock::now() + 100ms);
  CHECK(answers[0].status == 200);
  CHECK(fanout.connects() == before + 1);
}

TEST_CASE(
    "a large fleet's replies gathered between looks: every one read, and a silent one given up at the "
    "deadline") {
  // 80 endpoints: past the count from which a call lets replies gather before it looks again.
  std::vector<std::unique_ptr<ScriptedHttp>> servers;
  std::vector<HostPort> to;
  for (int i = 0; i < 80; ++i) {
    servers.push_back(
        std::make_unique<ScriptedHttp>(i == 41 ? ScriptedHttp::Mode::kSilent : ScriptedHttp::Mode::kAnswer));
    to.push_back(servers.back()->address());
  }
  HttpFanout fanout("", 500ms);
  for (int call = 0; call < 3; ++call) {
    const auto t0 = HttpFanout::Clock::now();
    const auto answers =
        fanout.post(to, "/v1/slots/hold", "{\"n\":" + std::to_string(call) + "}", t0 + 300ms);
    const auto took = HttpFanout::Clock::now() - t0;
    CHECK(took >= 300ms);
    CHECK(took < 600ms);
    REQUIRE(answers.size() == to.size());
    for (std::size_t i = 0; i < answers.size(); ++i) {
      if (i == 41) {
        CHECK(answers[i].status == 0);
        CHECK(answers[i].error == "no reply by the deadline");
      } else {
        CHECK(answers[i].status == 200);
        CHECK(answers[i].body == "/v1/slots/hold {\"n\":" + std::to_string(call) + "}");
      }
    }
  }
  // Without the silent one, a call ends as soon as the last reply is in, not at its deadline.
  to.erase(to.begin() + 41);
  const auto t0 = HttpFanout::Clock::now();
  const auto answers = fanout.post(to, "/x", "{}", t0 + 5s);
  CHECK(HttpFanout::Clock::now() - t0 < 1s);
  for (const auto& a : answers)
    CHECK(a.status == 200);
}

TEST_CASE("a refused connection is an answer at once") {
  int port = 0;
  {
    ScriptedHttp gone(ScriptedHttp::Mode::kAnswer);
    port = gone.address().port;
  }
  ScriptedHttp up(ScriptedHttp::Mode::kAnswer);
  HttpFanout fanout("", 500ms);
  const auto t0 = HttpFanout::Clock::now();
  const auto answers = fanout.post({{"127.0.0.1", port}, up.address()}, "/x", "{}", t0 + 2s);
  CHECK(HttpFanout::Clock::now() - t0 < 1s);
  CHECK(answers[0].status == 0);
  CHECK(answers[0].error.find("cannot connect") == 0);
  CHECK(answers[1].status == 200);
}

TEST_CASE("a kept connection the server closed is replaced, and the request still answered") {
  ScriptedHttp closing(ScriptedHttp::Mode::kAnswerThenClose);
  HttpFanout fanout("", 500ms);
  for (int call = 0; call < 3; ++call) {
    const auto answers = fanout.post({closing.address()}, "/x", "{}", HttpFanout::Clock::now() + 1s);
    CHECK(answers[0].status == 200);
    std::this_thread::sleep_for(20ms);  // the close reaches this side
  }
  CHECK(closing.requests() == 3);
  CHECK(fanout.connects() == 3);
}

TEST_CASE("connections opened ahead are the ones the next call uses") {
  ScriptedHttp a(ScriptedHttp::Mode::kAnswer), b(ScriptedHttp::Mode::kAnswer);
  int gone_port = 0;
  {
    ScriptedHttp gone(ScriptedHttp::Mode::kAnswer);
    gone_port = gone.address().port;
  }
  HttpFanout fanout("", 500ms);
  const auto silent = fanout.connect_ahead({a.address(), b.address(), {"127.0.0.1", gone_port}},
                                           HttpFanout::Clock::now() + 500ms);
  REQUIRE(silent.size() == 1);
  CHECK(silent[0].first == "127.0.0.1:" + std::to_string(gone_port));
  CHECK(fanout.connects() == 3);
  // Each server took its connection and answered a first request on it before connect_ahead returned.
  CHECK(a.accepted() == 1);
  CHECK(a.requests() == 1);
  CHECK(b.requests() == 1);
  const auto answers = fanout.post({a.address(), b.address()}, "/x", "{}", HttpFanout::Clock::now() + 1s);
  CHECK(answers[0].status == 200);
  CHECK(answers[1].status == 200);
  CHECK(fanout.connects() == 3);
  // Kept ones are not opened again.
  CHECK(fanout.connect_ahead({a.address(), b.address()}, HttpFanout::Clock::now() + 500ms).empty());
  CHECK(fanout.connects() == 3);
  CHECK(a.accepted() == 1);
  CHECK(a.requests() == 2);
}
