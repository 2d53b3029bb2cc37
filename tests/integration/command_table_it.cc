// keys_of() against a real server's COMMAND GETKEYS, for a corpus of command lines: one or more plausible
// lines for every command and subcommand the server documents (built from COMMAND DOCS argument trees:
// required arguments only, every optional one, and each alternative of a oneof), plus hand-written lines for
// the commands whose keys move. Also checks the table against the server's own COMMAND reply.
//
// By default the server is a node of the shared test cluster; SLOTSHIFT_GETKEYS_SERVER=host:port points the
// test at any other server instead (a Redis 7.2 or 8.0, say).
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/command_table.h"
#include "common/resp.h"
#include "tests/integration/fixture.h"

namespace slotshift {
namespace {

using test::Connection;
using test::Endpoint;
using Line = std::vector<std::string>;

Connection& server() {
  static Connection* connection = [] {
    if (const char* env = std::getenv("SLOTSHIFT_GETKEYS_SERVER")) {
      const std::string s(env);
      const auto colon = s.rfind(':');
      return new Connection(Endpoint{s.substr(0, colon), std::stoi(s.substr(colon + 1))});
    }
    return new Connection(test::shared_cluster().nodes().front());
  }();
  return *connection;
}

std::string str(const redisReply* r) {
  return r->str ? std::string(r->str, r->len) : std::string();
}

// One argument of a COMMAND DOCS argument tree.
struct DocArg {
  std::string name, type, token;
  bool optional = false, multiple = false, multiple_token = false;
  std::vector<DocArg> args;
};

DocArg parse_arg(const resp::Value& kv) {
  DocArg a;
  if (auto* r = kv.find("name")) a.name = r->str;
  if (auto* r = kv.find("type")) a.type = r->str;
  if (auto* r = kv.find("token")) a.token = r->str;
  if (auto* r = kv.find("flags")) {
    for (const auto& f : r->elements) {
      a.optional |= f.str == "optional";
      a.multiple |= f.str == "multiple";
      a.multiple_token |= f.str == "multiple_token";
    }
  }
  if (auto* r = kv.find("arguments")) {
    for (const auto& e : r->elements)
      a.args.push_back(parse_arg(e));
  }
  return a;
}

// How one line is built from an argument tree: with or without the optional arguments, and which alternative
// of each oneof.
struct Variant {
  bool optional;
  std::size_t alternative;
};

class LineBuilder {
 public:
  explicit LineBuilder(Variant v) : v_(v) {}

  void args(const std::vector<DocArg>& list, Line& out) {
    for (std::size_t i = 0; i < list.size(); ++i) {
      const DocArg& a = list[i];
      if (a.optional && !v_.optional) continue;
      // "numkeys key [key ...]": numkeys must count the keys that follow.
      const bool counts_next =
          a.type == "integer" && a.name.starts_with("num") && i + 1 < list.size() && list[i + 1].multiple;
      if (counts_next) {
        const DocArg& next = list[i + 1];
        const int n = next.optional && !v_.optional ? 0 : (v_.optional ? 2 : 1);
        if (!a.token.empty()) out.push_back(a.token);
        out.push_back(std::to_string(n));
        for (int k = 0; k < n; ++k)
          one(next, out, k == 0 || next.multiple_token);
        ++i;
        continue;
      }
      const int times = a.multiple && v_.optional ? 2 : 1;
      for (int k = 0; k < times; ++k)
        one(a, out, k == 0 || a.multiple_token);
    }
  }

 private:
  void one(const DocArg& a, Line& out, bool with_token) {
    if (with_token && !a.token.empty()) out.push_back(a.token);
    if (a.type == "key") {
      out.push_back("key" + std::to_string(++keys_));
    } else if (a.type == "integer") {
      out.push_back("1");
    } else if (a.type == "double") {
      out.push_back("1.5");
    } else if (a.type == "pattern") {
      out.push_back("pat*");
    } else if (a.type == "unix-time") {
      out.push_back("1700000000");
    } else if (a.type == "block") {
      args(a.args, out);
    } else if (a.type == "oneof") {
      if (!a.args.empty()) one(a.args[v_.alternative % a.args.size()], out, true);
    } else if (a.type != "pure-token") {
      out.push_back(a.name.empty() ? "value" : a.name);
    }
  }

  Variant v_;
  int keys_ = 0;
};

// Lines for a command (and, recursively, its subcommands) from its COMMAND DOCS entry.
void lines_from_docs(const Line& prefix, const resp::Value& doc, std::set<Line>& out) {
  if (auto* subs = doc.find("subcommands")) {
    for (std::size_t i = 0; i + 1 < subs->elements.size(); i += 2) {
      const std::string& full = subs->elements[i].str;  // "config|get"
      Line p = prefix;
      p.push_back(full.substr(full.find('|') + 1));
      lines_from_docs(p, subs->elements[i + 1], out);
    }
    return;
  }
  std::vector<DocArg> args;
  if (auto* r = doc.find("arguments")) {
    for (const auto& e : r->elements)
      args.push_back(parse_arg(e));
  }
  for (Variant v : {Variant{false, 0}, Variant{true, 0}, Variant{true, 1}, Variant{true, 2},
                    Variant{false, 1}, Variant{false, 2}}) {
    Line line = prefix;
    LineBuilder(v).args(args, line);
    out.insert(line);
  }
}

// Hand-written lines for the commands whose keys move, with the edge cases; "''" is an empty argument.
const char* const kHandCorpus[] = {
    "eval s 2 a b x y",
    "eval s 0",
    "eval s 0 x",
    "eval s 1 a",
    "eval s 3 a b",
    "eval s -1 a",
    "eval s x a",
    "eval s 1x a",
    "evalsha s 1 a",
    "eval_ro s 2 a b",
    "evalsha_ro s 1 a",
    "fcall f 2 a b c",
    "fcall_ro f 1 a",
    "fcall f 0",
    "fcall f 5 a",
    "zunionstore d 2 a b",
    "zunionstore d 0 a",
    "zunionstore d 3 a b",
    "zunionstore d x a",
    "zunionstore d -1 a",
    "zinterstore d 2 a b WEIGHTS 1 2 AGGREGATE MAX",
    "zdiffstore d 1 a",
    "zdiffstore d 0 a",
    "zunion 2 a b WITHSCORES",
    "zunion 0 a",
    "zunion 2 a",
    "zinter 1 a",
    "zinter x a",
    "zdiff 3 a b c",
    "zdiff -1 a",
    "sintercard 2 a b LIMIT 5",
    "sintercard 0 a",
    "sintercard 3 a b",
    "zintercard 1 a",
    "zintercard 2 a",
    "lmpop 2 a b LEFT",
    "lmpop 1 a RIGHT COUNT 3",
    "lmpop 0 a LEFT",
    "lmpop 5 a LEFT",
    "lmpop x a LEFT",
    "lmpop 2 LEFT a LEFT",
    "blmpop 0 2 a b LEFT",
    "blmpop 0 0 a LEFT",
    "blmpop 0 9 a LEFT",
    "zmpop 1 a MIN",
    "zmpop 0 a MIN",
    "bzmpop 1.5 3 a b c MAX COUNT 2",
    "bzmpop 0 x a MIN",
    "sort k",
    "sort k STORE d",
    "sort k store d",
    "sort k LIMIT 0 10 STORE d ALPHA",
    "sort k BY w_* GET # GET h_*->f STORE d",
    "sort k STORE a STORE b",
    "sort k BY store",
    "sort k GET store STORE d",
    "sort k LIMIT store 1",
    "sort k STORE",
    "sort k DESC STORE",
    "sort k STORE limit",
    "sort k STORE limit 1 2",
    "sort_ro k",
    "sort_ro k STORE d",
    "sort_ro k BY x GET y",
    "migrate h 6379 k 0 5000",
    "migrate h 6379 k 0 5000 COPY REPLACE",
    "migrate h 6379 '' 0 5000 KEYS a b c",
    "migrate h 6379 '' 0 5000 COPY REPLACE KEYS a b",
    "migrate h 6379 '' 0 5000 AUTH keys KEYS a",
    "migrate h 6379 '' 0 5000 AUTH2 u keys KEYS a b",
    "migrate h 6379 '' 0 5000 keys a",
    "migrate h 6379 k 0 5000 KEYS a b",
    "migrate h 6379 '' 0 5000 KEYS",
    "migrate h 6379 '' 0 5000 AUTH KEYS x",
    "georadius k 0 0 1 km",
    "georadius k 0 0 1 km WITHDIST",
    "georadius k 0 0 1 km STORE d",
    "georadius k 0 0 1 km COUNT 3 STOREDIST d",
    "georadius k 0 0 1 km storedist d",
    "georadius k 0 0 1 km STORE a STOREDIST b",
    "georadius k 0 0 1 km STORE",
    "georadiusbymember k m 1 km STORE d",
    "georadiusbymember k m 1 km ASC STOREDIST d",
    "georadius_ro k 0 0 1 km",
    "georadiusbymember_ro k m 1 km",
    "xread STREAMS a 0",
    "xread COUNT 2 BLOCK 0 STREAMS a b 0 0",
    "xread streams a b c 0 0 0",
    "xread STREAMS streams 0",
    "xread STREAMS a b c",
    "xread STREAMS a b c d e",
    "xread COUNT 1 STREAMS a",
    "xread COUNT 1 a 0",
    "xread STREAMS a",
    "xreadgroup GROUP g c STREAMS a >",
    "xreadgroup GROUP streams c STREAMS a >",
    "xreadgroup GROUP g c COUNT 1 NOACK STREAMS a b > >",
    "xreadgroup GROUP g c STREAMS a b c",
    "xreadgroup GROUP g c COUNT 1 a",
    "set k v",
    "set k v GET",
    "set k v EX 10 GET",
    "bitfield k GET u8 0",
    "bitfield k SET u8 0 1",
    "bitfield k",
    "bitfield_ro k GET u8 0",
    "lcs a b",
    "lcs a b LEN",
    "lcs a b IDX MINMATCHLEN 2 WITHMATCHLEN",
    "object encoding k",
    "object freq k",
    "object help",
    "memory usage k",
    "memory usage k SAMPLES 5",
    "memory stats",
    "xinfo stream k",
    "xinfo stream k FULL COUNT 1",
    "xinfo groups k",
    "xinfo consumers k g",
    "xinfo help",
    "mget a b c",
    "mset a 1 b 2",
    "mset a 1 b",
    "msetnx a 1 b 2",
    "del a a",
    "blpop a b 0",
    "bitop AND d a b",
    "GET k",
    "GeT k",
    "get",
    "get a b",
    "config",
    "config get x",
    "config nosuch",
    "nosuchcommand a",
    "CLUSTER KEYSLOT k",
    "cluster countkeysinslot 1",
    "client no-evict on",
    "ping",
    "publish c m",
    "subscribe c",
    "command count",
    "command getkeys get k",
    "hexpire k 10 FIELDS 2 a b",
    "waitaof 0 0 0",
    "client setinfo lib-name x",
};

std::vector<std::string> split(std::string_view s) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i <= s.size()) {
    std::size_t j = s.find(' ', i);
    if (j == std::string_view::npos) j = s.size();
    const std::string w(s.substr(i, j - i));
    out.push_back(w == "''" ? std::string() : w);
    i = j + 1;
  }
  return out;
}

std::string join(const Line& line) {
  std::string out;
  for (const auto& a : line)
    out += (out.empty() ? "" : " ") + (a.empty() ? std::string("''") : a);
  return out;
}

bool strict_integer(const std::string& s) {
  if (s.empty()) return false;
  std::size_t i = s[0] == '-' ? 1 : 0;
  if (i == s.size() || (s[i] == '0' && s.size() > i + 1) || (s[i] == '0' && i == 1)) return false;
  for (; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
  }
  return s.size() <= 19;
}

// Where keys_of is stricter than COMMAND GETKEYS on purpose (see command_table.h), the reason; else empty.
std::string deliberate_difference(const CommandInfo& cmd, const Line& line, KeysError error) {
  if (error != KeysError::kSyntax) return {};
  std::size_t numkeys_at = 0;
  switch (cmd.keys_proc) {
    case KeysProc::kEval:
    case KeysProc::kFcall:
    case KeysProc::kBlmpop:
    case KeysProc::kBzmpop:
    case KeysProc::kZunionInterDiffStore:
      numkeys_at = 2;
      break;
    case KeysProc::kZunionInterDiff:
    case KeysProc::kSintercard:
    case KeysProc::kLmpop:
    case KeysProc::kZmpop:
      numkeys_at = 1;
      break;
    case KeysProc::kXread:
      return "XREAD with an odd count after STREAMS: GETKEYS reads half, the command refuses";
    default:
      return {};
  }
  if (numkeys_at < line.size() && !strict_integer(line[numkeys_at])) {
    return "numkeys is not a strict integer: GETKEYS's fallback uses atoi, the command refuses";
  }
  if (cmd.has_flag(CommandFlag::kNoMandatoryKeys)) {
    return "bad numkeys of a script: GETKEYS answers an empty list, the command refuses";
  }
  return {};
}

struct Tally {
  int lines = 0, matched = 0, deliberate = 0, unknown_to_server = 0;
  std::map<std::string, int> reasons;
};

// Runs every line through COMMAND GETKEYS (pipelined) and keys_of, and checks they agree.
Tally compare(const std::vector<Line>& lines) {
  Connection& c = server();
  std::vector<std::vector<std::string>> requests;
  for (const Line& l : lines) {
    std::vector<std::string> r{"COMMAND", "GETKEYS"};
    r.insert(r.end(), l.begin(), l.end());
    requests.push_back(std::move(r));
  }
  const auto replies = c.pipeline(requests);
  Tally t;
  std::vector<std::size_t> keys;
  for (std::size_t n = 0; n < lines.size(); ++n) {
    const Line& line = lines[n];
    const redisReply* r = replies[n].get();
    std::vector<std::string_view> argv(line.begin(), line.end());
    const KeysError error = keys_of(argv, keys);
    std::vector<std::string> mine;
    for (auto i : keys)
      mine.push_back(line[i]);

    ++t.lines;
    INFO("line: ", join(line));
    INFO("GETKEYS: ", r->type == REDIS_REPLY_ERROR ? str(r) : std::string("array"));
    INFO("keys_of error ", static_cast<int>(error));
    if (r->type == REDIS_REPLY_ERROR) {
      const std::string e = str(r);
      if (e.find("Invalid command specified") != std::string::npos) {
        // Commands newer than the server (7.2/7.4 additions on a 7.0 server): the table knows more.
        if (error != KeysError::kUnknownCommand) {
          const CommandInfo* cmd = find_command(argv);
          REQUIRE(cmd != nullptr);
          CHECK(cmd->since > std::string_view("7.0.99"));
          ++t.unknown_to_server;
        } else {
          ++t.matched;
        }
      } else if (e.find("no key arguments") != std::string::npos) {
        const CommandInfo* cmd = find_command(argv);
        REQUIRE(cmd != nullptr);
        CHECK_FALSE(has_keys(*cmd));
        CHECK(error == KeysError::kNone);
        CHECK(keys.empty());
        ++t.matched;
      } else if (e.find("Invalid number of arguments") != std::string::npos) {
        CHECK(error == KeysError::kArity);
        ++t.matched;
      } else if (line.size() == 1 &&
                 e.find("wrong number of arguments for 'command|getkeys'") != std::string::npos) {
        // GETKEYS itself needs a command and one argument. A one-word line has no keys either way.
        CHECK(keys.empty());
        CHECK(error != KeysError::kSyntax);
        ++t.matched;
      } else if (e.find("Invalid arguments") != std::string::npos) {
        CHECK(error == KeysError::kSyntax);
        ++t.matched;
      } else {
        FAIL("unexpected GETKEYS error: ", e);
      }
      continue;
    }
    REQUIRE(r->type == REDIS_REPLY_ARRAY);
    std::vector<std::string> theirs;
    for (std::size_t i = 0; i < r->elements; ++i)
      theirs.push_back(str(r->element[i]));
    if (error != KeysError::kNone) {
      const CommandInfo* cmd = find_command(argv);
      REQUIRE(cmd != nullptr);
      const std::string why = deliberate_difference(*cmd, line, error);
      CHECK_MESSAGE(!why.empty(), "keys_of refused a line GETKEYS accepts");
      ++t.deliberate;
      ++t.reasons[why];
      continue;
    }
    CHECK(mine == theirs);
    t.matched += mine == theirs;
  }
  return t;
}

void report(const char* what, const Tally& t) {
  std::printf("%s: %d lines, %d match GETKEYS, %d deliberately stricter, %d unknown to the server\n", what,
              t.lines, t.matched, t.deliberate, t.unknown_to_server);
  for (const auto& [why, n] : t.reasons)
    std::printf("  %d x %s\n", n, why.c_str());
}

TEST_CASE("the table agrees with the server's COMMAND reply") {
  auto reply = server().command({"COMMAND"});
  REQUIRE(reply->type == REDIS_REPLY_ARRAY);
  int checked = 0;
  for (std::size_t i = 0; i < reply->elements; ++i) {
    const redisReply* c = reply->element[i];
    const std::string name = str(c->element[0]);
    std::string flags;
    for (std::size_t f = 0; f < c->element[2]->elements; ++f)
      flags += str(c->element[2]->element[f]) + " ";
    if (flags.find("module") != std::string::npos) continue;
    INFO(name);
    const CommandInfo* info = find_command(name);
    REQUIRE(info != nullptr);
    if (info->since > std::string_view("7.0.99")) continue;  // added later: this server's view may differ
    const long long server_arity = c->element[1]->integer;
    if (info->arity != server_arity) {
      // Widened where a later server accepts more arguments (ZRANK ... WITHSCORE since 7.2): the table must
      // still accept everything this server accepts, and only these commands may differ.
      CHECK(info->arity == -std::llabs(server_arity));
      CHECK_MESSAGE((name == "zrank" || name == "zrevrank"),
                    "arity of " << name << " differs from the server's");
    }
    CHECK(info->first_key == c->element[3]->integer);
    CHECK(info->last_key == c->element[4]->integer);
    CHECK(info->key_step == c->element[5]->integer);
    CHECK(info->key_specs.size() == c->element[8]->elements);
    CHECK(info->subcommands.size() >= c->element[9]->elements);
    CHECK(info->has_flag(CommandFlag::kMovableKeys) == (flags.find("movablekeys") != std::string::npos));
    CHECK(info->has_flag(CommandFlag::kWrite) == (flags.find("write ") != std::string::npos));
    ++checked;
  }
  CHECK(checked >= 200);
}

TEST_CASE("keys_of agrees with COMMAND GETKEYS on lines built from COMMAND DOCS") {
  // COMMAND DOCS nests deeper than hiredis 0.14's reader allows (7 levels): read it raw, decode it with ours.
  const resp::Value docs = resp::decode(server().raw("*2\r\n$7\r\nCOMMAND\r\n$4\r\nDOCS\r\n"));
  REQUIRE(docs.type == resp::Type::kArray);
  std::set<Line> corpus;
  std::set<std::string> commands;
  for (std::size_t i = 0; i + 1 < docs.elements.size(); i += 2) {
    const resp::Value& doc = docs.elements[i + 1];
    if (doc.find("module") != nullptr) continue;
    commands.insert(docs.elements[i].str);
    lines_from_docs({docs.elements[i].str}, doc, corpus);
  }
  CHECK(commands.size() >= 230);
  const Tally t = compare(std::vector<Line>(corpus.begin(), corpus.end()));
  report("generated corpus", t);
  CHECK(t.lines >= 500);
  CHECK(t.matched + t.deliberate + t.unknown_to_server == t.lines);
}

TEST_CASE("keys_of agrees with COMMAND GETKEYS on the hand-written corpus of movable keys") {
  std::vector<Line> lines;
  for (const char* l : kHandCorpus)
    lines.push_back(split(l));
  const Tally t = compare(lines);
  report("hand-written corpus", t);
  CHECK(t.matched + t.deliberate + t.unknown_to_server == t.lines);
  // Every deliberate difference the header documents shows up here, and nothing else does.
  CHECK(t.reasons.size() == 3);
}

}  // namespace
}  // namespace slotshift
