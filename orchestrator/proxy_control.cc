#include "orchestrator/proxy_control.h"

#include <netdb.h>
#include <sys/socket.h>

#include <arpa/inet.h>
#include <httplib.h>
#include <algorithm>
#include <future>
#include <nlohmann/json.hpp>
#include <set>

namespace slotshift {

bool ProxyCalls::all_ok() const {
  for (const auto& c : calls)
    if (!c.ok) return false;
  return true;
}

std::vector<std::string> ProxyCalls::failures() const {
  std::vector<std::string> out;
  for (const auto& c : calls)
    if (!c.ok) out.push_back(c.proxy + ": " + c.error);
  return out;
}

ProxyControl::ProxyControl(std::vector<HostPort> proxies, std::vector<HostPort> dns_names, std::string token,
                           std::chrono::milliseconds timeout)
    : proxies_(std::move(proxies)),
      dns_names_(std::move(dns_names)),
      token_(std::move(token)),
      timeout_(timeout) {}

std::vector<HostPort> ProxyControl::resolve(std::vector<ProxyCall>& failed) const {
  std::vector<HostPort> out = proxies_;
  std::set<std::string> seen;
  for (const auto& p : out)
    seen.insert(p.str());
  for (const auto& name : dns_names_) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    if (const int rc = getaddrinfo(name.host.c_str(), nullptr, &hints, &found); rc != 0) {
      failed.push_back(ProxyCall{name.str(), false, std::string("cannot resolve: ") + gai_strerror(rc), {}});
      continue;
    }
    std::size_t n = 0;
    for (addrinfo* a = found; a; a = a->ai_next) {
      char text[INET6_ADDRSTRLEN] = {};
      const void* addr =
          a->ai_family == AF_INET
              ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr)
              : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr);
      if (!inet_ntop(a->ai_family, addr, text, sizeof text)) continue;
      HostPort hp{text, name.port};
      if (seen.insert(hp.str()).second) out.push_back(hp);
      ++n;
    }
    freeaddrinfo(found);
    if (n == 0) failed.push_back(ProxyCall{name.str(), false, "resolves to no address", {}});
  }
  return out;
}

ProxyCalls ProxyControl::post_all(const std::string& path, const std::string& body,
                                  std::chrono::milliseconds timeout, const std::set<std::string>* only) {
  ProxyCalls result;
  const auto proxies = resolve(result.calls);
  // Proxies are near: a connection that takes longer than this is a proxy that is gone.
  const auto connect_timeout = std::min(timeout_, std::chrono::milliseconds(500));
  std::vector<std::future<ProxyCall>> pending;
  for (const auto& p : proxies) {
    if (forgotten_.count(p.str()) || (only && !only->count(p.str()))) continue;
    pending.push_back(std::async(std::launch::async, [this, p, &path, &body, timeout, connect_timeout] {
      ProxyCall call{p.str(), false, {}, {}};
      httplib::Client client(p.host, p.port);
      client.set_connection_timeout(std::chrono::duration_cast<std::chrono::microseconds>(connect_timeout));
      client.set_read_timeout(std::chrono::duration_cast<std::chrono::microseconds>(timeout));
      client.set_write_timeout(std::chrono::duration_cast<std::chrono::microseconds>(connect_timeout));
      if (!token_.empty()) client.set_bearer_token_auth(token_);
      const auto res = client.Post(path, body, "application/json");
      if (!res) {
        call.error = "no answer (" + httplib::to_string(res.error()) + ")";
      } else if (call.status = res->status; res->status != 200) {
        call.error = "HTTP " + std::to_string(res->status) + ": " + res->body;
        while (!call.error.empty() && (call.error.back() == '\n' || call.error.back() == '\r'))
          call.error.pop_back();
      } else {
        call.ok = true;
        call.body = res->body;
      }
      return call;
    }));
  }
  for (auto& f : pending)
    result.calls.push_back(f.get());
  return result;
}

ProxyCalls ProxyControl::hold(const std::string& slots, std::chrono::milliseconds ttl,
                              std::chrono::milliseconds wait, const std::string& owner,
                              const std::set<std::string>* only) {
  // The proxy answers once what is in flight for the slots has returned; it gives up (and releases) after
  // wait_ms, and this call a little after that.
  const nlohmann::json body{
      {"slots", slots}, {"ttl_ms", ttl.count()}, {"wait_ms", wait.count()}, {"owner", owner}};
  return post_all("/v1/slots/hold", body.dump(), wait + std::min(timeout_, std::chrono::milliseconds(100)),
                  only);
}

ProxyCalls ProxyControl::route(const std::string& slots, const HostPort& node) {
  return post_all("/v1/slots/route", nlohmann::json{{"slots", slots}, {"node", node.str()}}.dump(), timeout_);
}

ProxyCalls ProxyControl::release(const std::string& slots) {
  return post_all("/v1/slots/release", nlohmann::json{{"slots", slots}}.dump(), timeout_);
}

ProxyCalls ProxyControl::release_owner(const std::string& owner) {
  return post_all("/v1/slots/release", nlohmann::json{{"owner", owner}}.dump(), timeout_);
}

}  // namespace slotshift
