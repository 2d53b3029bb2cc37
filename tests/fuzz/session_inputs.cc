#include "tests/fuzz/session_inputs.h"

#include <algorithm>
#include <cctype>
#include <iterator>

#include "common/command_table.h"
#include "common/resp.h"
#include "tests/fuzz/session_harness.h"

namespace slotshift::fuzz {
namespace {

constexpr std::string_view kNumbers[] = {"0",   "1",   "-1", "2",    "10",   "100", "999999999999999999999",
                                         "1.5", "nan", "-0", "+inf", "0x10", "",    "9223372036854775807"};
constexpr std::string_view kWords[] = {
    "EX",     "PX",      "NX",      "XX",   "GET",      "KEEPTTL", "WITHSCORES", "LIMIT", "COUNT",
    "MATCH",  "TYPE",    "STREAMS", "KEYS", "BY",       "STORE",   "REPLY",      "OFF",   "ON",
    "SKIP",   "SETNAME", "AUTH",    "$",    "*",        ">",       "+",          "-",     "NOMKSTREAM",
    "MAXLEN", "~",       "ASYNC",   "SYNC", "FILTERBY", "ALL",     "SCHEMA",     "3",     "2"};

}  // namespace

InputGenerator::InputGenerator(std::uint64_t seed, std::size_t max_len) : state_(seed), max_len_(max_len) {}

// splitmix64, so that a seed gives the same inputs whatever the standard library.
std::uint64_t InputGenerator::rand() {
  std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void InputGenerator::remember(std::string input) {
  pool_.push_back(std::move(input));
  if (pool_.size() > 64) pool_.pop_front();
}

std::string InputGenerator::next() {
  std::string out;
  const std::size_t pick = below(100);
  if (pick < 25 && !pool_.empty()) {
    out = mutate(pool_[below(pool_.size())]);
  } else if (pick < 32) {
    out = header(1 + below(4), 512) + random_bytes(512);
  } else {
    out = fresh();
  }
  if (out.size() > max_len_) out.resize(max_len_);
  return out;
}

std::string InputGenerator::fresh() {
  const std::size_t connections = 1 + below(4);
  std::string body;
  for (std::size_t i = 0; i < connections; ++i) {
    if (i > 0) body += kStreamSeparator;
    body += stream();
  }
  return header(connections, body.size()) + body;
}

std::string InputGenerator::header(std::size_t connections, std::size_t body_size) {
  // Chunking: a third of the inputs write whole streams, small ones now and then a byte at a time, the rest
  // chunks of 1 to 2^e bytes, with e large enough that an input takes at most a few thousand writes.
  unsigned chunking = 0;
  if (body_size < 4096 && chance(10)) {
    chunking = 1;
  } else if (!chance(33)) {
    unsigned e_min = 1;
    while (e_min < 14 && (body_size >> e_min) > 2000)
      ++e_min;
    const unsigned e = e_min + static_cast<unsigned>(below(15 - e_min));
    chunking = e - 1 < 2 ? e - 1 + 14 : e - 1;  // chunking % 14 + 1 == e
  }
  const unsigned b0 = static_cast<unsigned>(connections - 1) | (chance(25) ? 4u : 0u) | (chunking << 3);
  const unsigned rules = chance(50) ? 0 : 1 + static_cast<unsigned>(below(kMaxRules));
  unsigned b1 = rules;
  if (chance(10)) b1 |= 8u | (chance(50) ? 16u : 0u);
  std::string out;
  out.push_back(static_cast<char>(b0));
  out.push_back(static_cast<char>(b1));
  for (unsigned r = 0; r < rules; ++r) {
    for (int b = 0; b < 4; ++b)
      out.push_back(static_cast<char>(rand()));
  }
  return out;
}

std::string InputGenerator::stream() {
  std::string out;
  const std::size_t items = 1 + below(chance(20) ? 40 : 10);
  for (std::size_t i = 0; i < items; ++i)
    out += item();
  return out;
}

std::string InputGenerator::item() {
  const std::size_t pick = below(100);
  if (pick < 45) return wire(table_command());
  if (pick < 80) return proxy_command();
  if (pick < 88) return inline_command();
  if (pick < 95) return protocol_edge();
  if (pick < 98) return random_bytes(64);
  return wire({"QUIT"});
}

std::string InputGenerator::wire(const std::vector<std::string>& argv) {
  std::vector<std::string_view> views(argv.begin(), argv.end());
  std::string out;
  resp::append_command(out, views);
  return out;
}

std::string InputGenerator::key() {
  static constexpr std::string_view kShapes[] = {"k", "{t}", "user:", "{x}a", "", "key"};
  return std::string(kShapes[below(std::size(kShapes))]) + std::to_string(below(48));
}

std::string InputGenerator::random_bytes(std::size_t max) {
  std::string out(below(max + 1), '\0');
  for (auto& c : out)
    c = static_cast<char>(rand());
  return out;
}

std::string InputGenerator::arg() {
  switch (below(10)) {
    case 0:
    case 1:
    case 2:
    case 3:
      return key();
    case 4:
      return std::string(kNumbers[below(std::size(kNumbers))]);
    case 5:
      return std::string(kWords[below(std::size(kWords))]);
    case 6:
      return random_bytes(16);
    case 7:
      return "";
    case 8:
      return std::string(below(300), static_cast<char>('a' + below(26)));
    default:
      return chance(5) ? std::string(below(48 * 1024), 'v') : std::to_string(rand() % 1000);
  }
}

// A command of the table, named in a random case, mostly with an arity it accepts.
std::vector<std::string> InputGenerator::table_command() {
  const auto commands = all_commands();
  const CommandInfo* cmd = &commands[below(commands.size())];
  std::vector<std::string> argv{std::string(cmd->name)};
  if (cmd->is_container() && chance(85)) {
    cmd = &cmd->subcommands[below(cmd->subcommands.size())];
    const auto bar = cmd->name.find('|');
    argv.push_back(std::string(cmd->name.substr(bar + 1)));
  }
  for (auto& a : argv) {
    for (auto& c : a) {
      if (chance(50)) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    }
  }
  std::size_t argc = static_cast<std::size_t>(cmd->arity >= 0 ? cmd->arity : -cmd->arity);
  if (cmd->arity < 0) argc += below(6);
  if (chance(10)) argc = chance(50) ? argc + 1 + below(2) : (argc > 2 ? argc - 1 - below(2) : 1);
  while (argv.size() < argc)
    argv.push_back(arg());
  argv.resize(std::max<std::size_t>(1, argc));
  return argv;
}

// The commands the proxy treats specially: split across slots, fanned out, answered itself, refused.
std::string InputGenerator::proxy_command() {
  std::vector<std::string> argv;
  const auto keys = [&](std::size_t n, bool values) {
    for (std::size_t i = 0; i < n; ++i) {
      argv.push_back(chance(80) ? "k" + std::to_string(i) : key());
      if (values) argv.push_back(arg());
    }
  };
  switch (below(16)) {
    case 0:
      argv = {"GET", key()};
      break;
    case 1:
      argv = {"SET", key(), arg()};
      break;
    case 2: {
      // MSET with an odd number of arguments over several slots (a key without its value at the end); the
      // counts that make the argument array exactly fill a power-of-two allocation come often.
      static constexpr std::size_t kPairs[] = {1, 3, 7, 15, 31, 63, 127, 255, 511, 1023, 2047, 2001};
      argv = {"MSET"};
      keys(chance(60) ? kPairs[below(std::size(kPairs))] : 1 + below(chance(10) ? 3000 : 20), true);
      argv.push_back("kend");
      break;
    }
    case 3:
      argv = {"MSET"};
      keys(1 + below(chance(10) ? 500 : 12), true);
      break;
    case 4:
    case 5: {
      static constexpr std::string_view kMulti[] = {"MGET", "DEL", "EXISTS", "UNLINK", "TOUCH"};
      argv = {std::string(kMulti[below(std::size(kMulti))])};
      keys(1 + below(chance(10) ? 2000 : 12), false);
      break;
    }
    case 6:
      argv = {"INCR", key()};
      break;
    case 7: {
      static constexpr std::string_view kLocal[] = {"PING", "ECHO",    "SELECT", "INFO",
                                                    "AUTH", "DISCARD", "EXEC"};
      argv = {std::string(kLocal[below(std::size(kLocal))])};
      for (std::size_t i = below(3); i > 0; --i)
        argv.push_back(arg());
      break;
    }
    case 8: {
      static constexpr std::string_view kSubs[] = {"REPLY",   "SETNAME", "GETNAME", "ID",       "INFO",
                                                   "SETINFO", "KILL",    "LIST",    "TRACKING", "NO-EVICT"};
      argv = {"CLIENT", std::string(kSubs[below(std::size(kSubs))])};
      if (chance(70)) argv.push_back(chance(50) ? std::string(chance(50) ? "OFF" : "SKIP") : arg());
      if (chance(20)) argv.push_back(arg());
      break;
    }
    case 9:
      argv = {"HELLO"};
      if (chance(80)) argv.push_back(std::string(kNumbers[below(std::size(kNumbers))]));
      if (chance(30)) argv.insert(argv.end(), {"SETNAME", arg()});
      if (chance(20)) argv.insert(argv.end(), {"AUTH", arg(), arg()});
      break;
    case 10: {
      static constexpr std::string_view kState[] = {"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE",
                                                    "MONITOR",   "WATCH",      "RESET",      "READONLY"};
      argv = {std::string(kState[below(std::size(kState))])};
      for (std::size_t i = below(3); i > 0; --i)
        argv.push_back(key());
      break;
    }
    case 11:
      argv = {"SCAN", chance(70) ? std::to_string(below(4) | (below(8) << 10)) : arg()};
      if (chance(30)) argv.insert(argv.end(), {"MATCH", "*"});
      if (chance(30)) argv.insert(argv.end(), {"COUNT", std::to_string(below(100))});
      break;
    case 12: {
      static constexpr std::string_view kFan[] = {"DBSIZE",  "KEYS",   "FLUSHALL",
                                                  "FLUSHDB", "SCRIPT", "FUNCTION"};
      argv = {std::string(kFan[below(std::size(kFan))])};
      if (argv[0] == "KEYS") argv.push_back("*");
      if (argv[0] == "SCRIPT") argv.insert(argv.end(), {chance(50) ? "EXISTS" : "LOAD", arg()});
      if (argv[0] == "FUNCTION") argv.push_back(chance(50) ? "FLUSH" : "DELETE");
      break;
    }
    case 13: {
      // A transaction: commands on one slot (or not), then EXEC or DISCARD, sometimes nested or unfinished.
      std::string out = wire({"MULTI"});
      const bool one_slot = chance(70);
      for (std::size_t i = below(6); i > 0; --i) {
        const std::string k = one_slot ? "{t}" + std::to_string(below(5)) : key();
        out += wire(chance(50) ? std::vector<std::string>{"INCR", k}
                               : std::vector<std::string>{"SET", k, arg()});
        if (chance(5)) out += wire({"MULTI"});
        if (chance(5)) out += wire(table_command());
      }
      if (chance(90)) out += wire({chance(85) ? "EXEC" : "DISCARD"});
      return out;
    }
    case 14:
      argv = {"BLPOP", key(), chance(50) ? "0" : "0.01"};
      break;
    default:
      argv = {"EVAL", "return 1", std::to_string(below(4))};
      for (std::size_t i = below(4); i > 0; --i)
        argv.push_back(key());
      break;
  }
  return wire(argv);
}

std::string InputGenerator::inline_command() {
  static constexpr std::string_view kInline[] = {
      "PING\r\n", "GET k1\r\n",       "SET k2 \"a b\"\r\n", "ECHO \"\\x41\\n\"\r\n", "GET 'unterminated\r\n",
      "\r\n",     "   \r\n",          "MGET k1 k2 k3\r\n",  "SET \"k\\\"q\" v\r\n",  "PING\n",
      "QUIT\r\n", "DEL {t}1 {t}2\r\n"};
  if (chance(5)) return std::string(64 * 1024 + below(4096), 'a') + "\r\n";
  if (chance(40)) {
    // A random command line from the table, when its arguments have no spaces or quotes.
    std::string line;
    for (const auto& a : table_command()) {
      if (a.empty() || a.find_first_of(" \t\r\n\"'\\") != std::string::npos) continue;
      if (!line.empty()) line += ' ';
      line += a;
    }
    if (!line.empty()) return line + "\r\n";
  }
  return std::string(kInline[below(std::size(kInline))]);
}

std::string InputGenerator::protocol_edge() {
  static constexpr std::string_view kEdges[] = {
      "*1\r\n$536870000\r\n",
      "*2\r\n$3\r\nGET\r\n$536870000\r\n",
      "$536870000\r\n",
      "*4294967295\r\n",
      "*1048577\r\n",
      "*-1\r\n",
      "*0\r\n",
      "*1\r\n$-1\r\n",
      "*2\r\n$3\r\nGET\r\n$-5\r\n",
      "*1\r\n$4\r\nPINGxx",
      "*1\r\n:4\r\n",
      "*1\r\n*1\r\n$4\r\nPING\r\n",
      "*2\r\n$4\r\nECHO\r\n$1048577\r\n",
      "*3\r\n$3\r\nSET\r\n$2\r\nbk\r\n$60000\r\n",
      "*1\r\n$4\r\nPING\r",
      "*1\r\n$4\r\nPI",
      "*\r\n",
      "*1x\r\n",
      "*2\r\n$3\r\nGET\r\n$1\r\nk\n\r\n",
      "*1\r\n$0\r\n\r\n",
  };
  std::string edge(kEdges[below(std::size(kEdges))]);
  // A large value that fits the proxy's limit, now and then whole.
  if (edge.ends_with("$60000\r\n") && chance(50)) edge += std::string(60000, 'z') + "\r\n";
  return edge;
}

std::string InputGenerator::mutate(std::string in) {
  if (in.size() < 2) return fresh();
  for (std::size_t m = 1 + below(4); m > 0; --m) {
    const std::size_t at = below(in.size());
    switch (below(8)) {
      case 0:
        in[at] = static_cast<char>(in[at] ^ (1 << below(8)));
        break;
      case 1:
        in.insert(at, random_bytes(8));
        break;
      case 2:
        in.erase(at, below(std::min<std::size_t>(64, in.size() - at) + 1));
        break;
      case 3: {
        const std::size_t len = below(std::min<std::size_t>(256, in.size() - at) + 1);
        in.insert(at, in.substr(at, len));
        break;
      }
      case 4:
        if (!pool_.empty()) {
          const std::string& other = pool_[below(pool_.size())];
          in = in.substr(0, at) + other.substr(below(other.size()));
        }
        break;
      case 5: {
        // A length or count header made extreme.
        const std::size_t hdr = in.find_first_of("*$", at);
        if (hdr == std::string::npos) break;
        const std::size_t end = in.find('\r', hdr);
        if (end == std::string::npos) break;
        static constexpr std::string_view kCounts[] = {
            "0", "-1", "-2", "1", "2", "65536", "1048576", "536870000", "4294967296", "99999999999999999999"};
        in.replace(hdr + 1, end - hdr - 1, kCounts[below(std::size(kCounts))]);
        break;
      }
      case 6:
        in[0] = static_cast<char>(rand());
        break;
      default:
        in[1] = static_cast<char>(rand());
        break;
    }
    if (in.size() < 2) return fresh();
  }
  return in;
}

}  // namespace slotshift::fuzz
