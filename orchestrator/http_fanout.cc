#include "orchestrator/http_fanout.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <optional>
#include <set>
#include <string_view>
#include <thread>

#include "common/ascii.h"

namespace slotshift {
namespace {

using std::chrono::duration_cast;
using std::chrono::milliseconds;

// A reply's head (status line and headers) larger than this is not a proxy's answer.
constexpr std::size_t kMaxHead = 16 * 1024;
// A reply's body larger than this neither.
constexpr std::size_t kMaxBody = 1 << 20;
// From this many endpoints on, a call lets replies gather for kGather between two looks
// (HttpFanout::exchange).
constexpr std::size_t kGatherFrom = 64;
constexpr auto kGather = std::chrono::microseconds(1000);

// Each endpoint costs a descriptor, and a fleet of sidecars can be thousands of proxies: the usual soft
// limit of 1024 would fail every connection past it. Raised once to the hard limit.
void raise_descriptor_limit() {
  static const bool raised = [] {
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
      limit.rlim_cur = limit.rlim_max;
      setrlimit(RLIMIT_NOFILE, &limit);
    }
    return true;
  }();
  (void)raised;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

std::optional<long> number(std::string_view s) {
  long v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || v < 0) return std::nullopt;
  return v;
}

// `timeout=5, max=100` -> the value of `name`.
std::optional<long> keep_alive_param(std::string_view value, std::string_view name) {
  while (!value.empty()) {
    const auto comma = value.find(',');
    const auto item = trim(value.substr(0, comma));
    const auto eq = item.find('=');
    if (eq != std::string_view::npos && iequals(trim(item.substr(0, eq)), name))
      return number(trim(item.substr(eq + 1)));
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return std::nullopt;
}

// The parts of a reply the control path needs.
struct Head {
  int status = 0;
  long content_length = -1;  // -1: none given, the body ends with the connection
  bool close = false;        // the server closes the connection after this reply
  long keep_alive_ms = 0, max_requests = 0;
};

// Parses the head `text` (status line and headers, without the blank line). False for anything that is not
// an HTTP/1.x reply.
bool parse_head(std::string_view text, Head& head) {
  auto eol = text.find("\r\n");
  const auto status_line = text.substr(0, eol);
  if (!status_line.starts_with("HTTP/1.") || status_line.size() < 12) return false;
  const auto code = number(status_line.substr(9, 3));
  if (!code || *code < 100 || *code > 999) return false;
  head.status = static_cast<int>(*code);
  head.close = status_line.starts_with("HTTP/1.0");
  while (eol != std::string_view::npos) {
    text.remove_prefix(eol + 2);
    eol = text.find("\r\n");
    const auto line = text.substr(0, eol);
    const auto colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    const auto name = trim(line.substr(0, colon));
    const auto value = trim(line.substr(colon + 1));
    if (iequals(name, "Content-Length")) {
      const auto n = number(value);
      if (!n) return false;
      head.content_length = *n;
    } else if (iequals(name, "Connection")) {
      head.close = iequals(value, "close");
    } else if (iequals(name, "Transfer-Encoding")) {
      return false;  // the admin endpoint never sends chunked replies
    } else if (iequals(name, "Keep-Alive")) {
      head.keep_alive_ms = keep_alive_param(value, "timeout").value_or(0) * 1000;
      head.max_requests = keep_alive_param(value, "max").value_or(0);
    }
  }
  return true;
}

std::string errno_text(int error) {
  return std::strerror(error);
}

}  // namespace

struct HttpFanout::Exchange {
  enum class Phase { kConnecting, kSending, kReading, kDone };
  std::size_t index = 0;
  std::string key;
  const HostPort* endpoint = nullptr;
  Phase phase = Phase::kConnecting;
  int fd = -1;
  bool reused = false;   // on a kept connection: a close before any reply byte may be the server's idle close
  bool retried = false;  // sent once more on a new connection already
  Kept kept;             // what is known of the connection, carried back to the pool
  Clock::time_point connect_deadline;
  std::size_t sent = 0;
  std::string in;
  std::size_t head_end = std::string::npos;
  Head head;
};

HttpFanout::HttpFanout(std::string bearer_token, std::chrono::milliseconds connect_timeout)
    : token_(std::move(bearer_token)), connect_timeout_(connect_timeout) {
  raise_descriptor_limit();
}

HttpFanout::~HttpFanout() {
  for (auto& [key, kept] : kept_)
    if (kept.fd >= 0) ::close(kept.fd);
}

int HttpFanout::take_kept(const std::string& key, Kept& kept) {
  const auto it = kept_.find(key);
  if (it == kept_.end()) return -1;
  kept = it->second;
  kept_.erase(it);
  if (kept.fd < 0) return -1;
  // The server closes a connection idle for its keep-alive timeout, or after its max requests. A request
  // sent just as it closes would be lost with the connection (it is then sent again, but that costs a
  // round trip): reuse only well within both. Without the server's word, 1 s.
  const auto idle = Clock::now() - kept.idle_since;
  const auto limit = kept.keep_alive.count() > 0 ? kept.keep_alive / 2 : milliseconds(1000);
  bool usable = idle < limit && (kept.max_requests == 0 || kept.requests + 1 < kept.max_requests);
  if (usable) {
    // A connection the server has closed meanwhile (or that has bytes nobody asked for) is readable.
    pollfd p{kept.fd, POLLIN, 0};
    usable = ::poll(&p, 1, 0) == 0;
  }
  if (!usable) {
    ::close(kept.fd);
    kept = Kept{};
    return -1;
  }
  return kept.fd;
}

bool HttpFanout::start_connect(Exchange& x, std::string& error) {
  x.reused = false;
  x.kept = Kept{};
  x.sent = 0;
  x.in.clear();
  x.head_end = std::string::npos;
  x.head = Head{};
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  // Proxies are named by address (--proxy-dns is resolved before this): a numeric host costs no lookup.
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(x.endpoint->port);
  if (const int rc = getaddrinfo(x.endpoint->host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    error = std::string("cannot resolve: ") + gai_strerror(rc);
    return false;
  }
  const int fd = ::socket(found->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    freeaddrinfo(found);
    error = "cannot connect: " + errno_text(errno);
    return false;
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  const int rc = ::connect(fd, found->ai_addr, found->ai_addrlen);
  const int connect_errno = errno;
  freeaddrinfo(found);
  if (rc != 0 && connect_errno != EINPROGRESS) {
    ::close(fd);
    error = "cannot connect: " + errno_text(connect_errno);
    return false;
  }
  ++connects_;
  x.fd = fd;
  x.phase = rc == 0 ? Exchange::Phase::kSending : Exchange::Phase::kConnecting;
  x.connect_deadline = Clock::now() + connect_timeout_;
  return true;
}

void HttpFanout::finish(Exchange& x, HttpAnswer& answer, Clock::time_point now) {
  x.phase = Exchange::Phase::kDone;
  if (answer.status == 0 || x.head.close || x.head.content_length < 0) {
    ::close(x.fd);
    x.fd = -1;
    return;
  }
  Kept kept = x.kept;
  kept.fd = x.fd;
  kept.idle_since = now;
  ++kept.requests;
  if (x.head.keep_alive_ms > 0) kept.keep_alive = milliseconds(x.head.keep_alive_ms);
  if (x.head.max_requests > 0) kept.max_requests = static_cast<int>(x.head.max_requests);
  x.fd = -1;
  // The same endpoint named twice in one call: one connection is kept.
  auto [it, inserted] = kept_.try_emplace(x.key, kept);
  if (!inserted) ::close(kept.fd);
}

std::vector<std::pair<std::string, std::string>> HttpFanout::connect_ahead(
    const std::vector<HostPort>& endpoints, Clock::time_point deadline) {
  // Only the endpoints without a kept connection still fit for a request, each once.
  std::vector<HostPort> fresh;
  std::set<std::string> named;
  for (const auto& endpoint : endpoints) {
    std::string key = endpoint.str();
    if (Kept kept; take_kept(key, kept) >= 0) {
      kept_.try_emplace(key, kept);
      continue;
    }
    if (named.insert(std::move(key)).second) fresh.push_back(endpoint);
  }
  std::vector<std::pair<std::string, std::string>> silent;
  if (fresh.empty()) return silent;
  // A connection the kernel completed is not yet one the server took: the server's accept, the hand-off of
  // the connection to a thread that reads it and the first pass through its request path would all fall in
  // the next call's deadline (with 200 proxies sharing a core, some missed a first HOLD's 150 ms for that
  // alone). A request the server answers without side effects does all of that now: /healthz, which every
  // slotshift-proxy answers and wants no token for.
  const auto answers = exchange(fresh, "GET", "/healthz", "", deadline);
  for (std::size_t i = 0; i < fresh.size(); ++i)
    if (answers[i].status == 0) silent.emplace_back(fresh[i].str(), answers[i].error);
  return silent;
}

std::vector<HttpAnswer> HttpFanout::post(const std::vector<HostPort>& endpoints, const std::string& path,
                                         const std::string& body, Clock::time_point deadline) {
  return exchange(endpoints, "POST", path, body, deadline);
}

std::vector<HttpAnswer> HttpFanout::exchange(const std::vector<HostPort>& endpoints, const char* method,
                                             const std::string& path, const std::string& body,
                                             Clock::time_point deadline) {
  std::vector<HttpAnswer> answers(endpoints.size());
  std::vector<Exchange> exchanges(endpoints.size());
  std::string request_tail =
      (body.empty() ? std::string() : std::string("Content-Type: application/json\r\n")) +
      "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: keep-alive\r\n";
  if (!token_.empty()) request_tail += "Authorization: Bearer " + token_ + "\r\n";
  request_tail += "\r\n" + body;
  std::vector<std::string> requests(endpoints.size());
  std::size_t open = 0;
  for (std::size_t i = 0; i < endpoints.size(); ++i) {
    auto& x = exchanges[i];
    x.index = i;
    x.endpoint = &endpoints[i];
    x.key = endpoints[i].str();
    requests[i] = std::string(method) + " " + path + " HTTP/1.1\r\nHost: " + x.key + "\r\n" + request_tail;
    x.fd = take_kept(x.key, x.kept);
    if (x.fd >= 0) {
      x.reused = true;
      x.phase = Exchange::Phase::kSending;
      ++open;
    } else if (std::string error; start_connect(x, error)) {
      ++open;
    } else {
      x.phase = Exchange::Phase::kDone;
      answers[i].error = error;
    }
  }

  // Something went wrong on `x` before any byte of its reply: on a kept connection that may be the server
  // having closed it as idle just as the request went out, so the request goes once more on a new one.
  auto failed = [&](Exchange& x, std::string error) {
    ::close(x.fd);
    x.fd = -1;
    if (x.reused && !x.retried && x.in.empty()) {
      x.retried = true;
      std::string why;
      if (start_connect(x, why)) return;
      error = why;
    }
    x.phase = Exchange::Phase::kDone;
    answers[x.index].error = std::move(error);
    --open;
  };

  std::vector<pollfd> fds;
  std::vector<Exchange*> polled;
  char buffer[16 * 1024];
  // The last round polls without waiting, once the deadline has passed: a reply that arrived by then is in
  // time, even if this thread had no CPU to read it before (a busy machine, or thousands of sockets).
  for (bool last = false; open > 0 && !last;) {
    const auto now = Clock::now();
    last = now >= deadline;
    auto wake = deadline;
    fds.clear();
    polled.clear();
    for (auto& x : exchanges) {
      if (x.phase == Exchange::Phase::kDone) continue;
      if (x.phase == Exchange::Phase::kConnecting) {
        if (now >= x.connect_deadline) {
          failed(x, "no connection within " + std::to_string(connect_timeout_.count()) + " ms");
          if (x.phase == Exchange::Phase::kDone) continue;
        }
        wake = std::min(wake, x.connect_deadline);
      }
      const short events = x.phase == Exchange::Phase::kReading ? POLLIN : POLLOUT;
      fds.push_back(pollfd{x.fd, events, 0});
      polled.push_back(&x);
    }
    if (fds.empty()) break;
    const auto wait_ms = last ? 0 : std::max<long>(0, duration_cast<milliseconds>(wake - now).count() + 1);
    const int ready = ::poll(fds.data(), fds.size(), static_cast<int>(std::min<long>(wait_ms, 1000)));
    if (ready < 0 && errno != EINTR) break;
    if (ready <= 0) continue;
    // A fleet's replies come back a few at a time over the call, and each wake-up for them costs a context
    // switch and a look at every socket (at 2,000 endpoints, most of this thread's CPU). Past
    // kGatherFrom endpoints, the replies of the next kGather are let gather before the next look: at most
    // that much later per call, for a fraction of the wake-ups.
    const bool gather = endpoints.size() >= kGatherFrom && !last;
    for (std::size_t k = 0; k < fds.size(); ++k) {
      if (fds[k].revents == 0) continue;
      Exchange& x = *polled[k];
      if (x.phase == Exchange::Phase::kConnecting) {
        int error = 0;
        socklen_t length = sizeof error;
        ::getsockopt(x.fd, SOL_SOCKET, SO_ERROR, &error, &length);
        if (error != 0) {
          failed(x, "cannot connect: " + errno_text(error));
          continue;
        }
        x.phase = Exchange::Phase::kSending;
      }
      if (x.phase == Exchange::Phase::kSending) {
        const auto& request = requests[x.index];
        const ssize_t n = ::send(x.fd, request.data() + x.sent, request.size() - x.sent, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n < 0) {
          failed(x, "cannot send: " + errno_text(errno));
          continue;
        }
        x.sent += static_cast<std::size_t>(n);
        if (x.sent == request.size()) x.phase = Exchange::Phase::kReading;
        continue;
      }
      // Reading. A proxy that sends a reply's headers and body in two writes with Nagle on (slotshift-proxy
      // before it set TCP_NODELAY) holds the body until this side acknowledges the headers: acknowledge every
      // read at once rather than up to 40 ms later. (The kernel leaves quick-ack mode by itself: set it
      // again.)
      const int one = 1;
      ::setsockopt(x.fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
      const ssize_t n = ::recv(x.fd, buffer, sizeof buffer, 0);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n < 0) {
        failed(x, "cannot read the reply: " + errno_text(errno));
        continue;
      }
      auto& answer = answers[x.index];
      if (n == 0) {
        // A reply without a Content-Length ends with the connection.
        if (x.head_end != std::string::npos && x.head.content_length < 0) {
          answer.status = x.head.status;
          answer.body = x.in.substr(x.head_end);
          finish(x, answer, Clock::now());
          --open;
        } else {
          failed(x, "the connection closed before the reply");
        }
        continue;
      }
      x.in.append(buffer, static_cast<std::size_t>(n));
      if (x.head_end == std::string::npos) {
        const auto blank = x.in.find("\r\n\r\n");
        if (blank == std::string::npos) {
          if (x.in.size() > kMaxHead) {
            x.retried = true;  // an answer, if not HTTP: never sent again
            failed(x, "not an HTTP reply");
          }
          continue;
        }
        if (!parse_head(std::string_view(x.in).substr(0, blank), x.head)) {
          x.retried = true;
          failed(x, "not an HTTP reply");
          continue;
        }
        x.head_end = blank + 4;
      }
      const std::size_t have = x.in.size() - x.head_end;
      if (have > kMaxBody) {
        failed(x, "a reply over " + std::to_string(kMaxBody) + " bytes");
        continue;
      }
      if (x.head.content_length >= 0 && have >= static_cast<std::size_t>(x.head.content_length)) {
        answer.status = x.head.status;
        answer.body = x.in.substr(x.head_end, static_cast<std::size_t>(x.head.content_length));
        finish(x, answer, Clock::now());
        --open;
      }
    }
    if (gather && open > 0) std::this_thread::sleep_until(std::min(Clock::now() + kGather, deadline));
  }
  // Whoever has not answered by now has no answer; its connection is closed, so that its reply, if it still
  // comes, is never read as the answer to another request.
  for (auto& x : exchanges) {
    if (x.phase == Exchange::Phase::kDone) continue;
    answers[x.index].error = x.phase == Exchange::Phase::kConnecting ? "no connection by the deadline"
                             : x.phase == Exchange::Phase::kSending  ? "the request not taken by the deadline"
                                                                     : "no reply by the deadline";
    ::close(x.fd);
    x.fd = -1;
    x.phase = Exchange::Phase::kDone;
  }
  return answers;
}

}  // namespace slotshift
