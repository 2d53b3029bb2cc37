#include "common/command_table.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>

#include "common/ascii.h"

namespace slotshift {
namespace generated {
#include "common/command_table_generated.inc"
}  // namespace generated

namespace {

constexpr bool sorted_by_name(std::span<const CommandInfo> commands) {
  for (std::size_t i = 1; i < commands.size(); ++i) {
    if (!(commands[i - 1].name < commands[i].name)) return false;
    if (!sorted_by_name(commands[i].subcommands)) return false;
  }
  return true;
}
static_assert(sorted_by_name(generated::kCommands),
              "the generated table must be sorted: binary search relies on it");

// Longer than any command or subcommand name; a longer argument cannot name one.
constexpr std::size_t kMaxNameLength = 48;

// Binary search of `name` (any case) in a table sorted by name. `prefix` is what every entry's name starts
// with before the searched part ("config|" for CONFIG's subcommands).
const CommandInfo* find_in(std::span<const CommandInfo> table, std::string_view prefix,
                           std::string_view name) {
  if (name.empty() || prefix.size() + name.size() > kMaxNameLength) return nullptr;
  std::array<char, kMaxNameLength> buffer;
  std::copy(prefix.begin(), prefix.end(), buffer.begin());
  std::transform(name.begin(), name.end(), buffer.begin() + static_cast<std::ptrdiff_t>(prefix.size()),
                 ascii_lower);
  const std::string_view key(buffer.data(), prefix.size() + name.size());
  auto it = std::lower_bound(table.begin(), table.end(), key,
                             [](const CommandInfo& c, std::string_view k) { return c.name < k; });
  return it != table.end() && it->name == key ? &*it : nullptr;
}

// Redis's string2ll: an optional '-', then digits with no leading zero (except "0" itself), nothing else,
// within 64 bits. What the commands themselves accept as numkeys.
bool parse_strict_integer(std::string_view s, std::int64_t& value) {
  if (s.empty() || s.size() > 20) return false;
  const bool negative = s[0] == '-';
  std::string_view digits = negative ? s.substr(1) : s;
  if (digits.empty() || digits[0] < '0' || digits[0] > '9') return false;
  if (digits[0] == '0') {
    if (digits.size() != 1 || negative) return false;
    value = 0;
    return true;
  }
  std::uint64_t v = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return false;
    const auto d = static_cast<std::uint64_t>(c - '0');
    if (v > (std::numeric_limits<std::uint64_t>::max() - d) / 10) return false;
    v = v * 10 + d;
  }
  const auto max = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  if (negative) {
    if (v > max + 1) return false;
    value = v == max + 1 ? std::numeric_limits<std::int64_t>::min() : -static_cast<std::int64_t>(v);
  } else {
    if (v > max) return false;
    value = static_cast<std::int64_t>(v);
  }
  return true;
}

using Argv = std::span<const std::string_view>;
using Keys = std::vector<std::size_t>;

// Redis's getKeysUsingKeySpecs: every spec not marked kNotKey, in order. Returns false when a spec cannot be
// interpreted (unknown begin or find, a numkeys that does not parse or does not fit, an incomplete spec):
// Redis then falls back to the command's getkeys proc. A keyword that is not found only skips its spec.
bool keys_from_specs(const CommandInfo& cmd, Argv argv, Keys& out) {
  const long argc = static_cast<long>(argv.size());
  for (const KeySpec& spec : cmd.key_specs) {
    if (has(spec.flags, KeySpecFlag::kNotKey)) continue;

    long first = 0;
    switch (spec.begin_search) {
      case BeginSearch::kIndex:
        first = spec.index;
        break;
      case BeginSearch::kKeyword: {
        // The scan stops one short of its end (argc - 1 forwards, 1 backwards), exactly as Redis's loop does;
        // a keyword there could not be followed by a key anyway, or is the command name.
        const long start = spec.startfrom > 0 ? spec.startfrom : argc + spec.startfrom;
        const long end = spec.startfrom > 0 ? argc - 1 : 1;
        for (long i = start; i != end; i = start <= end ? i + 1 : i - 1) {
          if (i >= argc || i < 1) break;
          if (iequals(argv[static_cast<std::size_t>(i)], spec.keyword)) {
            first = i + 1;
            break;
          }
        }
        if (first == 0) continue;  // keyword absent: this spec has no keys
        break;
      }
      case BeginSearch::kUnknown:
        return false;
    }

    long last = 0;
    long step = 0;
    switch (spec.find_keys) {
      case FindKeys::kRange:
        step = spec.keystep;
        if (spec.lastkey >= 0) {
          last = first + spec.lastkey;
        } else if (spec.limit == 0) {
          last = argc + spec.lastkey;
        } else {
          // Only 1/limit of what follows are keys (XREAD: keys, then as many IDs). Redis asserts lastkey ==
          // -1.
          last = first + ((argc - first) / spec.limit + spec.lastkey);
        }
        break;
      case FindKeys::kKeynum: {
        step = spec.keynum_step;
        // Redis checks only keynumidx against argc here; arity makes the two equivalent for its own commands.
        const long at = first + spec.keynumidx;
        if (at < 0 || at >= argc) return false;
        std::int64_t numkeys = 0;
        if (!parse_strict_integer(argv[static_cast<std::size_t>(at)], numkeys) || numkeys < 0) return false;
        if (numkeys > argc) return false;  // cannot fit; also keeps the arithmetic below in range
        first += spec.firstkey;
        last = first + static_cast<long>(numkeys) - 1;
        break;
      }
      case FindKeys::kUnknown:
        return false;
    }

    if (last >= argc || last < first || first >= argc || step <= 0) return false;
    for (long i = first; i <= last; i += step)
      out.push_back(static_cast<std::size_t>(i));
    if (has(spec.flags, KeySpecFlag::kIncomplete)) return false;
  }
  return true;
}

// Redis's genericGetKeys: [dest] numkeys key... (db.c). Redis reads numkeys with atoi and treats anything
// below 1 or beyond the arguments as "no keys"; here numkeys must be a strict integer (as the command
// requires), and a value the command would refuse is reported as kSyntax. numkeys 0 gives no keys and no
// error: EVAL/FCALL accept it, and for the others the caller turns "no keys" into kSyntax.
KeysError numkeys_keys(Argv argv, std::size_t store_at, std::size_t numkeys_at, std::size_t first,
                       Keys& out) {
  if (numkeys_at >= argv.size()) return KeysError::kSyntax;
  std::int64_t num = 0;
  if (!parse_strict_integer(argv[numkeys_at], num) || num < 0) return KeysError::kSyntax;
  if (first > argv.size() || static_cast<std::uint64_t>(num) > argv.size() - first) return KeysError::kSyntax;
  for (std::size_t i = 0; i < static_cast<std::size_t>(num); ++i)
    out.push_back(first + i);
  if (store_at != 0 && num > 0) out.push_back(store_at);
  return KeysError::kNone;
}

// SORT key [BY pattern] [LIMIT offset count] [GET pattern ...] [ASC|DESC] [ALPHA] [STORE dest]: the sort key,
// then the destination of the last STORE. BY/GET patterns may name other keys, but only by their content, so
// they are not keys here (nor in Redis). Options are skipped with their arguments, so "BY store" is a
// pattern.
void sort_keys(Argv argv, Keys& out) {
  out.push_back(1);
  std::size_t store = 0;
  for (std::size_t i = 2; i < argv.size(); ++i) {
    if (iequals(argv[i], "limit")) {
      i += 2;
    } else if (iequals(argv[i], "store")) {
      if (i + 1 < argv.size()) store = i + 1;
    } else if (iequals(argv[i], "get") || iequals(argv[i], "by")) {
      i += 1;
    }
  }
  if (store != 0) out.push_back(store);
}

// MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH pw | AUTH2 user pw] [KEYS key...]: the key at 3,
// or with KEYS (only valid with an empty key at 3) every argument after it. KEYS with a non-empty key: no
// keys.
void migrate_keys(Argv argv, Keys& out) {
  std::size_t first = 3;
  std::size_t num = 1;
  for (std::size_t i = 6; i < argv.size(); ++i) {
    if (iequals(argv[i], "keys")) {
      if (!argv[3].empty()) {
        num = 0;
      } else {
        first = i + 1;
        num = argv.size() - first;
      }
      break;
    }
    if (iequals(argv[i], "auth")) {
      i += 1;
    } else if (iequals(argv[i], "auth2")) {
      i += 2;
    }
  }
  for (std::size_t i = 0; i < num; ++i)
    out.push_back(first + i);
}

// GEORADIUS key lon lat radius unit ... / GEORADIUSBYMEMBER key member radius unit ...: the key, then the
// destination of the last STORE or STOREDIST (either overrides the other, as the command does).
void georadius_keys(Argv argv, Keys& out) {
  out.push_back(1);
  std::size_t stored = 0;
  for (std::size_t i = 5; i < argv.size(); ++i) {
    if ((iequals(argv[i], "store") || iequals(argv[i], "storedist")) && i + 1 < argv.size()) {
      stored = i + 1;
      ++i;
    }
  }
  if (stored != 0) out.push_back(stored);
}

// XREAD [COUNT n] [BLOCK ms] STREAMS key... id... / XREADGROUP GROUP g c [COUNT n] [BLOCK ms] [NOACK] STREAMS
// ...: options are parsed so that a group, consumer or key named "streams" is not taken for the keyword. Half
// of what follows STREAMS are keys; an odd count is a syntax error.
KeysError xread_keys(Argv argv, Keys& out) {
  std::size_t streams = 0;
  for (std::size_t i = 1; i < argv.size(); ++i) {
    if (iequals(argv[i], "block") || iequals(argv[i], "count")) {
      ++i;
    } else if (iequals(argv[i], "group")) {
      i += 2;
    } else if (iequals(argv[i], "noack")) {
    } else if (iequals(argv[i], "streams")) {
      streams = i;
      break;
    } else {
      break;
    }
  }
  if (streams == 0) return KeysError::kSyntax;
  const std::size_t rest = argv.size() - streams - 1;
  if (rest == 0 || rest % 2 != 0) return KeysError::kSyntax;
  for (std::size_t i = 0; i < rest / 2; ++i)
    out.push_back(streams + 1 + i);
  return KeysError::kNone;
}

KeysError keys_from_proc(const CommandInfo& cmd, Argv argv, Keys& out) {
  switch (cmd.keys_proc) {
    case KeysProc::kNone:
      return KeysError::kNone;
    case KeysProc::kEval:
    case KeysProc::kFcall:
      return numkeys_keys(argv, 0, 2, 3, out);
    case KeysProc::kZunionInterDiff:
    case KeysProc::kSintercard:
    case KeysProc::kLmpop:
    case KeysProc::kZmpop:
      return numkeys_keys(argv, 0, 1, 2, out);
    case KeysProc::kBlmpop:
    case KeysProc::kBzmpop:
      return numkeys_keys(argv, 0, 2, 3, out);
    case KeysProc::kZunionInterDiffStore:
      return numkeys_keys(argv, 1, 2, 3, out);
    case KeysProc::kSort:
      sort_keys(argv, out);
      return KeysError::kNone;
    case KeysProc::kSortRo:
    case KeysProc::kSet:
    case KeysProc::kBitfield:
      out.push_back(1);
      return KeysError::kNone;
    case KeysProc::kMigrate:
      migrate_keys(argv, out);
      return KeysError::kNone;
    case KeysProc::kGeoradius:
      georadius_keys(argv, out);
      return KeysError::kNone;
    case KeysProc::kXread:
      return xread_keys(argv, out);
  }
  return KeysError::kNone;
}

}  // namespace

std::span<const CommandInfo> all_commands() {
  return generated::kCommands;
}

const CommandInfo* find_command(std::string_view name) {
  return find_in(generated::kCommands, {}, name);
}

const CommandInfo* find_command(std::span<const std::string_view> argv) {
  if (argv.empty()) return nullptr;
  const CommandInfo* cmd = find_command(argv[0]);
  if (cmd == nullptr || argv.size() == 1 || !cmd->is_container()) return cmd;
  // The subcommands are named "container|sub": search with that prefix.
  const std::size_t prefix_size = cmd->name.size() + 1;
  if (prefix_size > kMaxNameLength) return nullptr;
  std::array<char, kMaxNameLength> prefix;
  std::copy(cmd->name.begin(), cmd->name.end(), prefix.begin());
  prefix[cmd->name.size()] = '|';
  return find_in(cmd->subcommands, std::string_view(prefix.data(), prefix_size), argv[1]);
}

bool has_keys(const CommandInfo& cmd) {
  if (cmd.keys_proc != KeysProc::kNone) return true;
  return std::any_of(cmd.key_specs.begin(), cmd.key_specs.end(),
                     [](const KeySpec& s) { return !has(s.flags, KeySpecFlag::kNotKey); });
}

KeysError keys_of(const CommandInfo& cmd, std::span<const std::string_view> argv,
                  std::vector<std::size_t>& out) {
  out.clear();
  // In COMMAND GETKEYS's order: a command without keys has none, whatever its arguments; then the arity.
  if (!has_keys(cmd)) return KeysError::kNone;
  if (!arity_ok(cmd, argv.size())) return KeysError::kArity;

  // As getKeysFromCommandWithSpecs: the specs when there is one that names keys and none has variable flags;
  // the getkeys proc when there is no such spec or the specs fail.
  bool any_key_spec = false;
  bool variable_flags = false;
  for (const KeySpec& s : cmd.key_specs) {
    any_key_spec |= !has(s.flags, KeySpecFlag::kNotKey);
    variable_flags |= has(s.flags, KeySpecFlag::kVariableFlags);
  }
  KeysError error = KeysError::kNone;
  bool from_specs = false;
  if (any_key_spec && !variable_flags) {
    from_specs = keys_from_specs(cmd, argv, out);
    if (!from_specs) out.clear();
  }
  if (!from_specs) error = keys_from_proc(cmd, argv, out);

  // The specs of XREAD/XREADGROUP read half of what follows STREAMS and accept an odd count (COMMAND GETKEYS
  // returns those keys); the command refuses it, and so does this.
  if (error == KeysError::kNone && from_specs && cmd.keys_proc == KeysProc::kXread) {
    if (out.empty() || (argv.size() - out.front()) % 2 != 0) error = KeysError::kSyntax;
  }
  // No keys for a command that needs one: COMMAND GETKEYS's "Invalid arguments specified for command".
  if (error == KeysError::kNone && out.empty() && !cmd.has_flag(CommandFlag::kNoMandatoryKeys)) {
    error = KeysError::kSyntax;
  }
  if (error != KeysError::kNone) out.clear();
  return error;
}

KeysError keys_of(std::span<const std::string_view> argv, std::vector<std::size_t>& out) {
  out.clear();
  const CommandInfo* cmd = find_command(argv);
  if (cmd == nullptr) return KeysError::kUnknownCommand;
  return keys_of(*cmd, argv, out);
}

KeysResult keys_of(std::span<const std::string_view> argv) {
  KeysResult result;
  result.error = keys_of(argv, result.keys);
  return result;
}

}  // namespace slotshift
