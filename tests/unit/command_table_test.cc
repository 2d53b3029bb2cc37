// The command table and keys_of() without a server: table sanity, lookups, and key positions for every family
// of commands whose keys move, with the edge cases Redis refuses. tests/integration/command_table_it.cc
// checks the same against a real server's COMMAND GETKEYS.
#include "common/command_table.h"

#include <doctest/doctest.h>

#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace slotshift {
namespace {

using Idx = std::vector<std::size_t>;

// Splits on spaces; "''" stands for an empty argument.
std::vector<std::string_view> words(std::string_view line) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < line.size()) {
    std::size_t j = line.find(' ', i);
    if (j == std::string_view::npos) j = line.size();
    std::string_view w = line.substr(i, j - i);
    out.push_back(w == "''" ? std::string_view{} : w);
    i = j + 1;
  }
  return out;
}

Idx keys(std::string_view line) {
  const auto argv = words(line);
  KeysResult r = keys_of(argv);
  INFO(line);
  REQUIRE(r.error == KeysError::kNone);
  return r.keys;
}

KeysError error_of(std::string_view line) {
  const auto argv = words(line);
  return keys_of(argv).error;
}

TEST_CASE("every Redis 7.0 command is in the table, sorted, with its arity") {
  // COMMAND COUNT of Redis 7.0.15 is 240; with the 7.2 and 7.4 additions the table has 250.
  CHECK(all_commands().size() >= 250);
  std::set<std::string_view> names;
  for (const CommandInfo& c : all_commands()) {
    for (char ch : c.name)
      CHECK_FALSE((ch >= 'A' && ch <= 'Z'));
    CHECK(c.arity != 0);
    CHECK_FALSE(c.since.empty());
    CHECK_FALSE(c.group.empty());
    names.insert(c.name);
    for (const CommandInfo& s : c.subcommands) {
      CHECK(s.name.starts_with(std::string(c.name) + "|"));
      CHECK(s.arity != 0);
    }
  }
  CHECK(names.size() == all_commands().size());

  const std::pair<std::string_view, int> arities[] = {
      {"get", 2},     {"set", -3},       {"mget", -2},   {"mset", -3},    {"del", -2},       {"eval", -3},
      {"sort", -2},   {"migrate", -6},   {"xread", -4},  {"ping", -1},    {"multi", 1},      {"exec", 1},
      {"lmpop", -4},  {"blmpop", -5},    {"zunion", -3}, {"rename", 3},   {"georadius", -6}, {"bitfield", -2},
      {"lcs", -3},    {"subscribe", -2}, {"config", -2}, {"cluster", -2}, {"hello", -1},     {"smove", 4},
      {"waitaof", 4}, {"hexpire", -6},   {"blpop", -3},  {"object", -2},  {"xinfo", -2},     {"memory", -2},
  };
  for (auto [name, arity] : arities) {
    INFO(name);
    const CommandInfo* c = find_command(name);
    REQUIRE(c != nullptr);
    CHECK(c->arity == arity);
  }
  for (std::string_view name :
       {"append",     "asking",     "bgrewriteaof",   "bgsave",   "bitcount",   "bitop",      "bitpos",
        "brpoplpush", "bzpopmax",   "client",         "command",  "copy",       "dbsize",     "discard",
        "dump",       "echo",       "evalsha_ro",     "expire",   "failover",   "fcall_ro",   "flushall",
        "function",   "geoadd",     "geosearchstore", "getdel",   "getex",      "hrandfield", "incr",
        "keys",       "latency",    "lpos",           "module",   "monitor",    "object",     "pfcount",
        "psync",      "publish",    "readonly",       "replconf", "reset",      "restore",    "script",
        "select",     "shutdown",   "sintercard",     "slowlog",  "spublish",   "ssubscribe", "swapdb",
        "sync",       "unwatch",    "wait",           "watch",    "xautoclaim", "xgroup",     "xsetid",
        "zintercard", "zrangestore"}) {
    INFO(name);
    CHECK(find_command(name) != nullptr);
  }
  CHECK(find_command("nosuchcommand") == nullptr);
  CHECK(find_command("") == nullptr);
  CHECK(find_command(std::string(200, 'a')) == nullptr);
}

TEST_CASE("the 7.2 and 7.4 additions carry their since") {
  REQUIRE(find_command("waitaof") != nullptr);
  CHECK(find_command("waitaof")->since == "7.2.0");
  for (std::string_view n : {"hexpire", "hpexpire", "hexpireat", "hpexpireat", "httl", "hpttl", "hexpiretime",
                             "hpexpiretime", "hpersist"}) {
    INFO(n);
    REQUIRE(find_command(n) != nullptr);
    CHECK(find_command(n)->since == "7.4.0");
  }
  const std::string_view setinfo[] = {"CLIENT", "SETINFO", "lib-name", "x"};
  REQUIRE(find_command(setinfo) != nullptr);
  CHECK(find_command(setinfo)->since == "7.2.0");
  // 7.0 stays authoritative for what it knows: GET has been there since 1.0.0.
  CHECK(find_command("get")->since == "1.0.0");
}

TEST_CASE("flags, ACL categories and key specs are kept") {
  const CommandInfo* get = find_command("get");
  REQUIRE(get != nullptr);
  CHECK(get->has_flag(CommandFlag::kReadonly));
  CHECK(get->has_flag(CommandFlag::kFast));
  CHECK_FALSE(get->has_flag(CommandFlag::kWrite));
  CHECK(has(get->acl, AclCategory::kRead | AclCategory::kString | AclCategory::kFast));
  CHECK(get->group == "string");
  CHECK(get->first_key == 1);
  CHECK(get->last_key == 1);
  CHECK(get->key_step == 1);
  REQUIRE(get->key_specs.size() == 1);
  CHECK(get->key_specs[0].begin_search == BeginSearch::kIndex);
  CHECK(get->key_specs[0].index == 1);
  CHECK(get->key_specs[0].find_keys == FindKeys::kRange);
  CHECK(has(get->key_specs[0].flags, KeySpecFlag::kRO | KeySpecFlag::kAccess));

  const CommandInfo* set = find_command("SET");
  REQUIRE(set != nullptr);
  CHECK(set->has_flag(CommandFlag::kWrite | CommandFlag::kDenyOom));
  CHECK(has(set->key_specs[0].flags, KeySpecFlag::kVariableFlags));

  CHECK(find_command("sort")->has_flag(CommandFlag::kMovableKeys));
  CHECK(find_command("eval")->has_flag(CommandFlag::kNoMandatoryKeys));
  CHECK(find_command("blpop")->has_flag(CommandFlag::kBlocking));
  CHECK(find_command("subscribe")->has_flag(CommandFlag::kPubsub));
  CHECK(find_command("auth")->has_flag(CommandFlag::kNoAuth));
  CHECK(find_command("multi")->has_flag(CommandFlag::kAllowBusy));
  CHECK(find_command("flushall")->has_flag(CommandFlag::kWrite));
  CHECK(has(find_command("flushall")->acl, AclCategory::kDangerous));
  CHECK_FALSE(find_command("get")->has_flag(CommandFlag::kMovableKeys));

  const CommandInfo* migrate = find_command("migrate");
  REQUIRE(migrate->key_specs.size() == 2);
  CHECK(migrate->key_specs[1].begin_search == BeginSearch::kKeyword);
  CHECK(migrate->key_specs[1].keyword == "KEYS");
  CHECK(migrate->key_specs[1].startfrom == -2);
  CHECK(has(migrate->key_specs[1].flags, KeySpecFlag::kIncomplete));

  const CommandInfo* xread = find_command("xread");
  REQUIRE(xread->key_specs.size() == 1);
  CHECK(xread->key_specs[0].limit == 2);
  CHECK(xread->key_specs[0].lastkey == -1);

  const CommandInfo* eval = find_command("eval");
  REQUIRE(eval->key_specs.size() == 1);
  CHECK(eval->key_specs[0].find_keys == FindKeys::kKeynum);
  CHECK(eval->key_specs[0].keynumidx == 0);
  CHECK(eval->key_specs[0].firstkey == 1);

  const CommandInfo* keys_cmd = find_command("keys");
  bool all_shards = false;
  for (auto t : keys_cmd->tips)
    all_shards |= t == "request_policy:all_shards";
  CHECK(all_shards);
}

TEST_CASE("lookups are case-insensitive and resolve subcommands") {
  CHECK(find_command("GeT") == find_command("get"));
  CHECK(find_command("ZUNIONSTORE") == find_command("zunionstore"));

  auto sub = [](std::string_view line) { return find_command(words(line)); };
  REQUIRE(sub("config get maxmemory") != nullptr);
  CHECK(sub("config get maxmemory")->name == "config|get");
  CHECK(sub("CONFIG GET maxmemory") == sub("config get x"));
  CHECK(sub("Cluster KeySlot x")->name == "cluster|keyslot");
  CHECK(sub("client no-evict on")->name == "client|no-evict");
  CHECK(sub("object encoding k")->name == "object|encoding");
  CHECK(sub("xinfo stream k")->name == "xinfo|stream");
  CHECK(sub("xgroup createconsumer s g c")->name == "xgroup|createconsumer");
  CHECK(sub("function load x")->name == "function|load");
  CHECK(sub("script flush")->name == "script|flush");
  CHECK(sub("memory usage k")->name == "memory|usage");
  CHECK(sub("command getkeys get k")->name == "command|getkeys");
  CHECK(sub("acl setuser u")->name == "acl|setuser");
  CHECK(sub("config nosuch") == nullptr);
  CHECK(sub("config")->name == "config");  // the container alone; its arity refuses it
  CHECK(sub("get k")->name == "get");      // a plain command ignores argv[1]
  CHECK(find_command(std::span<const std::string_view>{}) == nullptr);

  for (std::string_view c : {"cluster", "config", "client", "object", "xinfo", "function", "script", "memory",
                             "command", "acl", "xgroup", "latency", "module", "slowlog", "pubsub"}) {
    INFO(c);
    REQUIRE(find_command(c) != nullptr);
    CHECK(find_command(c)->is_container());
  }
}

TEST_CASE("arity_ok") {
  const CommandInfo& get = *find_command("get");
  CHECK(arity_ok(get, 2));
  CHECK_FALSE(arity_ok(get, 1));
  CHECK_FALSE(arity_ok(get, 3));
  const CommandInfo& mset = *find_command("mset");
  CHECK_FALSE(arity_ok(mset, 2));
  CHECK(arity_ok(mset, 3));
  CHECK(arity_ok(mset, 99));
  CHECK(error_of("get") == KeysError::kArity);
  CHECK(error_of("get a b") == KeysError::kArity);
  CHECK(error_of("config") == KeysError::kNone);  // no keys at all: checked before the arity, as GETKEYS
  CHECK(error_of("ping a b c") == KeysError::kNone);
  CHECK(error_of("nosuch a") == KeysError::kUnknownCommand);
  CHECK(error_of("config nosuch a") == KeysError::kUnknownCommand);
}

TEST_CASE("keys at fixed positions") {
  CHECK(keys("get k") == Idx{1});
  CHECK(keys("GET k") == Idx{1});
  CHECK(keys("mget a b c") == Idx{1, 2, 3});
  CHECK(keys("mset a 1 b 2") == Idx{1, 3});
  CHECK(keys("msetnx a 1 b 2 c 3") == Idx{1, 3, 5});
  CHECK(keys("del a a") == Idx{1, 2});
  CHECK(keys("rename a b") == Idx{1, 2});
  CHECK(keys("smove a b m") == Idx{1, 2});
  CHECK(keys("blpop a b 0") == Idx{1, 2});
  CHECK(keys("brpoplpush a b 0") == Idx{1, 2});
  CHECK(keys("lcs a b") == Idx{1, 2});
  CHECK(keys("lcs a b LEN") == Idx{1, 2});
  CHECK(keys("bitop AND d a b") == Idx{2, 3, 4});
  CHECK(keys("bitfield k GET u8 0") == Idx{1});
  CHECK(keys("bitfield k SET u8 0 1") == Idx{1});
  CHECK(keys("bitfield_ro k GET u8 0") == Idx{1});
  CHECK(keys("set k v GET") == Idx{1});
  CHECK(keys("set k v") == Idx{1});
  CHECK(keys("object encoding k") == Idx{2});
  CHECK(keys("memory usage k SAMPLES 5") == Idx{2});
  CHECK(keys("xinfo stream k FULL") == Idx{2});
  CHECK(keys("xinfo consumers k g") == Idx{2});
  CHECK(keys("xgroup create k g $ MKSTREAM") == Idx{2});
  CHECK(keys("hexpire k 10 FIELDS 2 a b") == Idx{1});
  CHECK(keys("geosearchstore d s FROMMEMBER m BYRADIUS 1 km") == Idx{1, 2});
  CHECK(keys("ping").empty());
  CHECK(keys("config get x").empty());
}

TEST_CASE("EVAL, FCALL and their read-only forms: numkeys") {
  for (std::string_view cmd : {"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"}) {
    INFO(cmd);
    const std::string c(cmd);
    CHECK(keys(c + " s 2 a b x y") == Idx{3, 4});
    CHECK(keys(c + " s 1 a") == Idx{3});
    CHECK(keys(c + " s 0").empty());  // no keys is fine for scripts
    CHECK(keys(c + " s 0 x y").empty());
    CHECK(error_of(c + " s 3 a b") == KeysError::kSyntax);  // more keys than arguments
    CHECK(error_of(c + " s -1 a") == KeysError::kSyntax);
    CHECK(error_of(c + " s x a") == KeysError::kSyntax);
    CHECK(error_of(c + " s 1x a") == KeysError::kSyntax);  // GETKEYS's atoi would take 1
    CHECK(error_of(c + " s +1 a") == KeysError::kSyntax);
    CHECK(error_of(c + " s 01 a") == KeysError::kSyntax);
    CHECK(error_of(c + " s '' a") == KeysError::kSyntax);
    CHECK(error_of(c + " s 99999999999999999999 a") == KeysError::kSyntax);
    CHECK(error_of(c + " s") == KeysError::kArity);
  }
}

TEST_CASE("ZUNION/ZINTER/ZDIFF and their STORE forms, SINTERCARD/ZINTERCARD") {
  CHECK(keys("zunionstore d 2 a b") == Idx{1, 3, 4});
  CHECK(keys("zinterstore d 2 a b WEIGHTS 1 2 AGGREGATE MAX") == Idx{1, 3, 4});
  CHECK(keys("zdiffstore d 1 a") == Idx{1, 3});
  CHECK(keys("zunion 2 a b WITHSCORES") == Idx{2, 3});
  CHECK(keys("zinter 1 a") == Idx{2});
  CHECK(keys("zdiff 3 a b c") == Idx{2, 3, 4});
  CHECK(keys("sintercard 2 a b LIMIT 5") == Idx{2, 3});
  CHECK(keys("zintercard 1 a") == Idx{2});
  for (std::string_view line :
       {"zunionstore d 0 a", "zunionstore d 3 a b", "zunionstore d -1 a", "zunionstore d x a", "zunion 0 a",
        "zunion 2 a", "zinter -2 a b", "zdiff x a", "zdiffstore d 0 a", "sintercard 0 a", "sintercard 3 a b",
        "zintercard -1 a", "sintercard 1x a"}) {
    INFO(line);
    CHECK(error_of(line) == KeysError::kSyntax);
  }
}

TEST_CASE("LMPOP/BLMPOP/ZMPOP/BZMPOP") {
  CHECK(keys("lmpop 2 a b LEFT") == Idx{2, 3});
  CHECK(keys("lmpop 1 a RIGHT COUNT 3") == Idx{2});
  CHECK(keys("blmpop 0 2 a b LEFT") == Idx{3, 4});
  CHECK(keys("zmpop 1 a MIN") == Idx{2});
  CHECK(keys("bzmpop 1.5 3 a b c MAX COUNT 2") == Idx{3, 4, 5});
  CHECK(keys("lmpop 2 LEFT a LEFT") == Idx{2, 3});  // keys are positional, whatever they are named
  for (std::string_view line :
       {"lmpop 0 a LEFT", "lmpop 5 a LEFT", "lmpop x a LEFT", "lmpop -1 a LEFT", "blmpop 0 0 a LEFT",
        "blmpop 0 9 a LEFT", "zmpop 0 a MIN", "bzmpop 0 x a MIN"}) {
    INFO(line);
    CHECK(error_of(line) == KeysError::kSyntax);
  }
}

TEST_CASE("SORT and SORT_RO: STORE wherever it is") {
  CHECK(keys("sort k") == Idx{1});
  CHECK(keys("sort k STORE d") == Idx{1, 3});
  CHECK(keys("sort k store d") == Idx{1, 3});
  CHECK(keys("sort k LIMIT 0 10 STORE d ALPHA") == Idx{1, 6});
  CHECK(keys("sort k BY w_* GET # GET h_*->f STORE d") == Idx{1, 9});
  CHECK(keys("sort k STORE a STORE b") == Idx{1, 5});  // the last STORE wins, as in SORT
  CHECK(keys("sort k BY store") == Idx{1});            // a pattern named "store" is no option
  CHECK(keys("sort k GET store STORE d") == Idx{1, 5});
  CHECK(keys("sort k LIMIT store 1") == Idx{1});  // LIMIT's arguments are skipped
  CHECK(keys("sort k STORE") == Idx{1});          // STORE without a destination
  CHECK(keys("sort k DESC STORE") == Idx{1});
  CHECK(keys("sort k STORE limit") == Idx{1, 3});
  CHECK(keys("sort_ro k") == Idx{1});
  CHECK(keys("sort_ro k STORE d") == Idx{1});  // SORT_RO has no STORE
  CHECK(keys("sort_ro k BY x GET y") == Idx{1});
}

TEST_CASE("MIGRATE with and without KEYS") {
  CHECK(keys("migrate h 6379 k 0 5000") == Idx{3});
  CHECK(keys("migrate h 6379 k 0 5000 COPY REPLACE") == Idx{3});
  CHECK(keys("migrate h 6379 '' 0 5000 KEYS a b c") == Idx{7, 8, 9});
  CHECK(keys("migrate h 6379 '' 0 5000 COPY REPLACE KEYS a b") == Idx{9, 10});
  CHECK(keys("migrate h 6379 '' 0 5000 AUTH keys KEYS a") == Idx{9});  // a password named "keys"
  CHECK(keys("migrate h 6379 '' 0 5000 AUTH2 u keys KEYS a b") == Idx{10, 11});
  CHECK(keys("migrate h 6379 '' 0 5000 keys a") == Idx{7});
  // KEYS with a non-empty key is a syntax error of MIGRATE: no keys.
  CHECK(error_of("migrate h 6379 k 0 5000 KEYS a b") == KeysError::kSyntax);
  // KEYS as the last argument: no spec finds it, so the (empty) key at 3 is all there is, as in Redis.
  CHECK(keys("migrate h 6379 '' 0 5000 KEYS") == Idx{3});
}

TEST_CASE("GEORADIUS and GEORADIUSBYMEMBER: STORE and STOREDIST") {
  CHECK(keys("georadius k 0 0 1 km") == Idx{1});
  CHECK(keys("georadius k 0 0 1 km WITHDIST") == Idx{1});
  CHECK(keys("georadius k 0 0 1 km STORE d") == Idx{1, 7});
  CHECK(keys("georadius k 0 0 1 km COUNT 3 STOREDIST d") == Idx{1, 9});
  CHECK(keys("georadius k 0 0 1 km storedist d") == Idx{1, 7});
  CHECK(keys("georadiusbymember k m 1 km STORE d") == Idx{1, 6});
  CHECK(keys("georadiusbymember k m 1 km ASC STOREDIST d") == Idx{1, 7});
  CHECK(keys("georadius_ro k 0 0 1 km") == Idx{1});
  // Both STORE and STOREDIST: the specs give both (COMMAND GETKEYS does too).
  CHECK(keys("georadius k 0 0 1 km STORE a STOREDIST b") == Idx{1, 7, 9});
}

TEST_CASE("XREAD and XREADGROUP: STREAMS") {
  CHECK(keys("xread STREAMS a 0") == Idx{2});
  CHECK(keys("xread COUNT 2 BLOCK 0 STREAMS a b 0 0") == Idx{6, 7});
  CHECK(keys("xread streams a b c 0 0 0") == Idx{2, 3, 4});
  CHECK(keys("xread STREAMS streams 0") == Idx{2});  // a stream named "streams"
  CHECK(keys("xreadgroup GROUP g c STREAMS a >") == Idx{5});
  CHECK(keys("xreadgroup GROUP streams c STREAMS a >") == Idx{5});  // a group named "streams"
  CHECK(keys("xreadgroup GROUP g c COUNT 1 NOACK STREAMS a b > >") == Idx{8, 9});
  for (std::string_view line :
       {"xread STREAMS a b c", "xread STREAMS a b c d e", "xread COUNT 1 STREAMS a", "xread COUNT 1 a 0",
        "xreadgroup GROUP g c STREAMS a b c", "xreadgroup GROUP g c COUNT 1 a"}) {
    INFO(line);
    CHECK(error_of(line) == KeysError::kSyntax);
  }
  CHECK(error_of("xread STREAMS a") == KeysError::kArity);
  CHECK(error_of("xreadgroup GROUP g c STREAMS a") == KeysError::kArity);
}

TEST_CASE("the buffer form reuses its vector and clears it on error") {
  std::vector<std::size_t> out{42, 43};
  const std::string_view a[] = {"mget", "a", "b"};
  CHECK(keys_of(a, out) == KeysError::kNone);
  CHECK(out == Idx{1, 2});
  const std::string_view b[] = {"zunion", "x", "a"};
  CHECK(keys_of(b, out) == KeysError::kSyntax);
  CHECK(out.empty());
  const std::string_view c[] = {"GET", "k"};
  CHECK(keys_of(*find_command("get"), c, out) == KeysError::kNone);
  CHECK(out == Idx{1});
}

TEST_CASE("has_keys") {
  CHECK(has_keys(*find_command("get")));
  CHECK(has_keys(*find_command("eval")));
  CHECK(has_keys(*find_command("sort")));
  CHECK_FALSE(has_keys(*find_command("ping")));
  CHECK_FALSE(has_keys(*find_command("publish")));
}

}  // namespace
}  // namespace slotshift
