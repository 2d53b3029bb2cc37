// What a SIGHUP applies and what it keeps for a restart (proxy/config_reload.h).
#include <doctest/doctest.h>

#include "proxy/config_reload.h"

using namespace slotshift;
using namespace slotshift::proxy;

TEST_CASE("nothing changed says so") {
  Config c;
  const ReloadPlan plan = plan_reload(c, c);
  CHECK(plan.changed.empty());
  CHECK(plan.restart.empty());
  CHECK_FALSE(plan.login_changed);
  CHECK(describe(plan) == "no setting changed");
}

TEST_CASE("limits, timeouts, seeds and secrets take effect; secrets are named, not shown") {
  Config current;
  current.seeds = {HostPort{"127.0.0.1", 7000}};
  Config wanted = current;
  wanted.max_clients = 5;
  wanted.request_timeout = std::chrono::milliseconds(750);
  wanted.seeds.push_back(HostPort{"127.0.0.1", 7001});
  wanted.requirepass = "s3cret-value";
  wanted.masterauth = "node-pass";
  const ReloadPlan plan = plan_reload(current, wanted);
  CHECK(plan.restart.empty());
  CHECK(plan.login_changed);
  CHECK(plan.next.max_clients == 5);
  CHECK(plan.next.request_timeout.count() == 750);
  CHECK(plan.next.seeds.size() == 2);
  CHECK(plan.next.requirepass == "s3cret-value");
  const std::string line = describe(plan);
  CHECK(line == "changed: seed, request-timeout-ms, max-clients, masterauth, requirepass");
  CHECK(line.find("s3cret") == std::string::npos);
}

TEST_CASE("what shapes the process keeps its value until a restart") {
  Config current;
  current.seeds = {HostPort{"127.0.0.1", 7000}};
  Config wanted = current;
  wanted.listen = HostPort{"0.0.0.0", 6379};
  wanted.threads = current.threads + 3;
  wanted.client_auth = Config::ClientAuth::kAcl;
  wanted.tls.enabled = true;
  wanted.tls.cert_file = "/etc/tls/cert.pem";
  wanted.idle_timeout = std::chrono::seconds(30);
  const ReloadPlan plan = plan_reload(current, wanted);
  CHECK(plan.next.listen == current.listen);
  CHECK(plan.next.threads == current.threads);
  CHECK(plan.next.client_auth == Config::ClientAuth::kNone);
  CHECK_FALSE(plan.next.tls.enabled);
  CHECK(plan.next.idle_timeout.count() == 30);
  CHECK(plan.next.tls.cert_file.empty());
  CHECK(plan.error.empty());
  CHECK(describe(plan) ==
        "changed: idle-timeout-s; needs a restart (kept as it was): listen, threads, client-auth, tls (on or "
        "off, "
        "with its files)");
}

TEST_CASE("a secret goes with what it guards: kept with it for a restart, never applied alone") {
  Config current;
  current.admin = HostPort{"0.0.0.0", 9180};
  current.admin_token = "t0ken";
  current.requirepass = "pw";
  current.client_auth = Config::ClientAuth::kPassword;
  current.seeds = {HostPort{"127.0.0.1", 7000}};
  // The endpoint moved to loopback and lost its token; the clients' password removed, which makes the mode
  // none: applied alone, either would open what the pair closed.
  Config wanted = current;
  wanted.admin = HostPort{"127.0.0.1", 9180};
  wanted.admin_token.clear();
  wanted.requirepass.clear();
  wanted.client_auth = Config::ClientAuth::kNone;
  const ReloadPlan plan = plan_reload(current, wanted);
  CHECK(plan.next.admin_token == "t0ken");
  CHECK(plan.next.requirepass == "pw");
  CHECK(plan.error.empty());
  CHECK(describe(plan) == "needs a restart (kept as it was): admin, client-auth, admin-token, requirepass");
}

TEST_CASE("settings that do not go together change nothing") {
  Config current;
  current.seeds = {HostPort{"127.0.0.1", 7000}};
  Config wanted = current;
  wanted.masteruser = "proxy";  // without its password
  const ReloadPlan plan = plan_reload(current, wanted);
  CHECK(plan.error.find("--masteruser proxy needs its password") != std::string::npos);
}
