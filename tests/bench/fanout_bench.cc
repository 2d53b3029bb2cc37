// What one control call costs the orchestrator as the fleet grows: HttpFanout::post to N endpoints on kept
// connections, with no proxy behind them. The endpoints are N listening sockets served by one thread (epoll,
// on core 0) that answers every request at once with a small JSON reply, as a proxy answers a HOLD; the
// caller runs on core 1. For each N it warms the connections (connect_ahead), then makes 20 calls and prints
// the medians of the call's wall time and of the calling thread's CPU time, per call and per endpoint.
//
//
// --spread-ms S spreads each call's replies evenly over S ms, as a fleet's answers come back over a HOLD's
// 50-100 ms (the servers' thread spins to keep the pace): the caller then wakes for a few replies at a time.
//
//   build/tests/bench/fanout_bench [--spread-ms S] [N ...]      (default: 2 20 200 2000, S 0)
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "orchestrator/http_fanout.h"

using namespace slotshift;
using namespace std::chrono_literals;

namespace {

void pin(int core) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(core, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

double thread_cpu_ms() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) * 1e3 + static_cast<double>(t.tv_nsec) / 1e6;
}

// N listening sockets and their connections, served by one thread.
class Endpoints {
 public:
  // The replies of a call go out `spread` apart in all (one every spread / n).
  Endpoints(int n, std::chrono::microseconds spread) : gap_(spread / n) {
    epoll_ = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < n; ++i) {
      const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(fd, 128) != 0) {
        std::perror("bind/listen");
        std::exit(1);
      }
      socklen_t len = sizeof addr;
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
      addresses_.push_back(HostPort{"127.0.0.1", ntohs(addr.sin_port)});
      listeners_.insert(fd);
      watch(fd);
    }
    thread_ = std::thread([this] { run(); });
  }
  ~Endpoints() {
    stop_ = true;
    thread_.join();
    for (auto& [fd, in] : connections_)
      close(fd);
    for (std::size_t fd = 0; fd < listeners_.bits.size(); ++fd)
      if (listeners_.bits[fd]) close(static_cast<int>(fd));
    close(epoll_);
  }
  const std::vector<HostPort>& addresses() const { return addresses_; }

 private:
  void watch(int fd) {
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.fd = fd;
    epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &e);
  }
  void run() {
    pin(0);
    const std::string reply =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nKeep-Alive: timeout=60, max=100000\r\n"
        "Content-Length: 14\r\n\r\n{\"held\":\"0-9\"}";
    std::vector<epoll_event> events(256);
    char buf[4096];
    while (!stop_) {
      const int n = epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), due_.empty() ? 20 : 0);
      for (int i = 0; i < n; ++i) {
        const int fd = events[i].data.fd;
        if (listeners_.count(fd)) {
          for (int c; (c = accept4(fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0;) {
            connections_[c];
            watch(c);
          }
          continue;
        }
        const ssize_t got = recv(fd, buf, sizeof buf, 0);
        if (got <= 0) {
          epoll_ctl(epoll_, EPOLL_CTL_DEL, fd, nullptr);
          close(fd);
          connections_.erase(fd);
          continue;
        }
        auto& in = connections_[fd];
        in.append(buf, static_cast<std::size_t>(got));
        // Whole requests only: the head, then Content-Length bytes of body.
        for (;;) {
          const auto blank = in.find("\r\n\r\n");
          if (blank == std::string::npos) break;
          const auto cl = in.find("Content-Length: ");
          const std::size_t length = cl < blank ? std::strtoul(in.c_str() + cl + 16, nullptr, 10) : 0;
          if (in.size() < blank + 4 + length) break;
          in.erase(0, blank + 4 + length);
          due_.push_back(fd);
        }
      }
      // The replies, one every gap_: spread as a fleet's come back, or all at once.
      const auto now = std::chrono::steady_clock::now();
      while (next_ < due_.size() && now >= next_at_) {
        (void)!send(due_[next_], reply.data(), reply.size(), MSG_NOSIGNAL);
        ++next_;
        next_at_ = std::max(next_at_, now - gap_) + gap_;
      }
      if (next_ == due_.size()) {
        due_.clear();
        next_ = 0;
      }
    }
  }

  // The listening sockets, a flag per descriptor (looked up at every event).
  struct FdSet {
    std::vector<bool> bits;
    void insert(int fd) {
      if (static_cast<std::size_t>(fd) >= bits.size()) bits.resize(static_cast<std::size_t>(fd) + 1);
      bits[static_cast<std::size_t>(fd)] = true;
    }
    bool count(int fd) const {
      return static_cast<std::size_t>(fd) < bits.size() && bits[static_cast<std::size_t>(fd)];
    }
  };

  int epoll_ = -1;
  std::chrono::microseconds gap_;
  std::vector<int> due_;  // connections owed a reply, in the order their requests came
  std::size_t next_ = 0;
  std::chrono::steady_clock::time_point next_at_{};
  FdSet listeners_;
  std::map<int, std::string> connections_;
  std::vector<HostPort> addresses_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> sizes;
  long spread_ms = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--spread-ms" && i + 1 < argc)
      spread_ms = std::atol(argv[++i]);
    else
      sizes.push_back(std::atoi(argv[i]));
  }
  if (sizes.empty()) sizes = {2, 20, 200, 2000};
  rlimit limit{};
  getrlimit(RLIMIT_NOFILE, &limit);
  limit.rlim_cur = limit.rlim_max;
  setrlimit(RLIMIT_NOFILE, &limit);
  pin(1);
  std::printf("%9s %12s %12s %16s %16s\n", "endpoints", "call ms", "cpu ms", "call us/endpoint",
              "cpu us/endpoint");
  const std::string body = R"({"slots":"0-272","ttl_ms":10000,"wait_ms":50,"owner":"slotshift-move-1-2"})";
  for (const int n : sizes) {
    Endpoints endpoints(n, std::chrono::milliseconds(spread_ms));
    HttpFanout fanout("token", 2000ms);
    const auto missed = fanout.connect_ahead(endpoints.addresses(), HttpFanout::Clock::now() + 10s);
    if (!missed.empty()) {
      std::fprintf(stderr, "%zu endpoints did not answer the warm-up\n", missed.size());
      return 1;
    }
    std::vector<double> wall, cpu;
    for (int call = 0; call < 20; ++call) {
      const double cpu0 = thread_cpu_ms();
      const auto t0 = std::chrono::steady_clock::now();
      const auto answers =
          fanout.post(endpoints.addresses(), "/v1/slots/hold", body, HttpFanout::Clock::now() + 10s);
      wall.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      cpu.push_back(thread_cpu_ms() - cpu0);
      for (const auto& a : answers)
        if (a.status != 200) {
          std::fprintf(stderr, "an endpoint did not answer: %s\n", a.error.c_str());
          return 1;
        }
    }
    const double w = median(wall), c = median(cpu);
    std::printf("%9d %12.2f %12.2f %16.1f %16.1f\n", n, w, c, w * 1000 / n, c * 1000 / n);
  }
  return 0;
}
