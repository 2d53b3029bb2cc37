// CLIENT LIST and CLIENT KILL's arguments read as Redis 7 reads them, with its errors (proxy/client_admin.h);
// tests/integration/proxy_info_test.py checks the same errors against a running redis-server.
#include <doctest/doctest.h>

#include <string>
#include <string_view>
#include <vector>

#include "proxy/client_admin.h"

using slotshift::proxy::ClientAdmin;

namespace {

std::string kill(std::vector<std::string_view> args, ClientAdmin::Filter& f, bool users_known = true) {
  args.insert(args.begin(), {"CLIENT", "KILL"});
  return ClientAdmin::parse_kill(args, users_known, f);
}

std::string list(std::vector<std::string_view> args, ClientAdmin::Filter& f) {
  args.insert(args.begin(), {"CLIENT", "LIST"});
  return ClientAdmin::parse_list(args, f);
}

}  // namespace

TEST_CASE("CLIENT KILL: the old form, the filters, and Redis's errors") {
  ClientAdmin::Filter f;
  CHECK(kill({"127.0.0.1:5000"}, f) == "");
  CHECK(f.old_form);
  CHECK_FALSE(f.skipme);  // the old form may kill the caller
  CHECK(*f.addr == "127.0.0.1:5000");

  ClientAdmin::Filter g;
  CHECK(kill({"ID", "7", "skipme", "NO", "user", "default", "MAXAGE", "10", "type", "pubsub"}, g) == "");
  CHECK_FALSE(g.old_form);
  CHECK(g.by_id);
  CHECK(g.ids == std::vector<std::uint64_t>{7});
  CHECK_FALSE(g.skipme);
  CHECK(g.maxage_s == 10);
  CHECK(g.type == ClientAdmin::Filter::Type::kPubSub);

  ClientAdmin::Filter h;
  CHECK(kill({}, h) == "-ERR wrong number of arguments for 'client|kill' command\r\n");
  CHECK(kill({"ID", "0"}, h) == "-ERR client-id should be greater than 0\r\n");
  CHECK(kill({"ID", "x"}, h) == "-ERR client-id should be greater than 0\r\n");
  CHECK(kill({"TYPE", "nope"}, h) == "-ERR Unknown client type 'nope'\r\n");
  CHECK(kill({"USER", "bob"}, h) == "-ERR No such user 'bob'\r\n");
  CHECK(kill({"USER", "bob"}, h, false) == "");  // ACL pass-through: the cluster's users are not known here
  CHECK(kill({"SKIPME", "maybe"}, h) == "-ERR syntax error\r\n");
  CHECK(kill({"ID", "1", "x"}, h) == "-ERR syntax error\r\n");
  CHECK(kill({"foo", "bar"}, h) == "-ERR syntax error\r\n");
}

TEST_CASE("CLIENT LIST: TYPE and ID, and Redis's errors") {
  ClientAdmin::Filter f;
  CHECK(list({}, f) == "");
  CHECK(list({"type", "normal"}, f) == "");
  CHECK(f.type == ClientAdmin::Filter::Type::kNormal);
  ClientAdmin::Filter g;
  CHECK(list({"ID", "3", "1"}, g) == "");
  CHECK(g.ids == std::vector<std::uint64_t>{3, 1});
  ClientAdmin::Filter h;
  CHECK(list({"TYPE", "foo"}, h) == "-ERR Unknown client type 'foo'\r\n");
  CHECK(list({"ID", "1", "abc"}, h) == "-ERR Invalid client ID\r\n");
  CHECK(list({"TYPE", "normal", "extra"}, h) == "-ERR syntax error\r\n");
  CHECK(list({"foo"}, h) == "-ERR syntax error\r\n");
}
