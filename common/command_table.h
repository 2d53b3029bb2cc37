// The Redis command table: for every command of Redis 7.0, plus the commands and subcommands Redis 7.2,
// 7.4 and 8.0 added, what Redis itself reports about it (COMMAND and COMMAND DOCS): arity, flags, ACL
// categories, key specs, tips, group, since, subcommands. And keys_of(), which finds the arguments of a
// command line that are keys the way Redis 7 does (COMMAND GETKEYS), so the proxy can hash them to slots
// without asking a server.
//
// The data lives in command_table_generated.inc, written by gen_command_table.py from live servers (see its
// header for how to regenerate it). Everything here is constexpr data: no allocation, no initialisation
// order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>
#include <vector>

namespace slotshift {

// Bit sets over an enum class: `a | b`, `a & b`, and `has(set, bit)`.
#define SLOTSHIFT_BITMASK_OPS(E)                                      \
  constexpr E operator|(E a, E b) {                                   \
    return static_cast<E>(static_cast<std::underlying_type_t<E>>(a) | \
                          static_cast<std::underlying_type_t<E>>(b)); \
  }                                                                   \
  constexpr E operator&(E a, E b) {                                   \
    return static_cast<E>(static_cast<std::underlying_type_t<E>>(a) & \
                          static_cast<std::underlying_type_t<E>>(b)); \
  }                                                                   \
  constexpr bool has(E set, E bits) {                                 \
    return (set & bits) == bits && bits != E{};                       \
  }

// Command flags, as COMMAND reports them (`write`, `readonly`, ...). Every flag Redis 7.0 to 8.0 can report
// is here, including the ones no built-in command of those versions carries (module, sentinel, ...).
enum class CommandFlag : std::uint32_t {
  kWrite = 1u << 0,
  kReadonly = 1u << 1,
  kDenyOom = 1u << 2,
  kModule = 1u << 3,
  kAdmin = 1u << 4,
  kPubsub = 1u << 5,
  kNoScript = 1u << 6,
  kBlocking = 1u << 7,
  kLoading = 1u << 8,
  kStale = 1u << 9,
  kSkipMonitor = 1u << 10,
  kSkipSlowlog = 1u << 11,
  kAsking = 1u << 12,
  kFast = 1u << 13,
  kNoAuth = 1u << 14,
  kMayReplicate = 1u << 15,
  kSentinel = 1u << 16,
  kOnlySentinel = 1u << 17,
  kNoMandatoryKeys = 1u << 18,
  kProtected = 1u << 19,
  kNoAsyncLoading = 1u << 20,
  kNoMulti = 1u << 21,
  kMovableKeys = 1u << 22,  // keys are not at fixed positions: use keys_of(), not first/last/step
  kAllowBusy = 1u << 23,
  kModuleNoCluster = 1u << 24,
  kTouchesArbitraryKeys = 1u << 25,
};
SLOTSHIFT_BITMASK_OPS(CommandFlag)

// ACL categories (`@read`, `@write`, ...), without the '@'.
enum class AclCategory : std::uint32_t {
  kKeyspace = 1u << 0,
  kRead = 1u << 1,
  kWrite = 1u << 2,
  kSet = 1u << 3,
  kSortedSet = 1u << 4,
  kList = 1u << 5,
  kHash = 1u << 6,
  kString = 1u << 7,
  kBitmap = 1u << 8,
  kHyperLogLog = 1u << 9,
  kGeo = 1u << 10,
  kStream = 1u << 11,
  kPubsub = 1u << 12,
  kAdmin = 1u << 13,
  kFast = 1u << 14,
  kSlow = 1u << 15,
  kBlocking = 1u << 16,
  kDangerous = 1u << 17,
  kConnection = 1u << 18,
  kTransaction = 1u << 19,
  kScripting = 1u << 20,
};
SLOTSHIFT_BITMASK_OPS(AclCategory)

// Key spec flags. RO/RW/OW/RM say how the value is used; access/update/insert/delete what is done to it.
// kNotKey marks an argument that looks like a key for routing only; kIncomplete says the spec may miss keys
// (Redis then asks the command's own getkeys function); kVariableFlags says the flags depend on the
// arguments.
enum class KeySpecFlag : std::uint16_t {
  kRO = 1u << 0,
  kRW = 1u << 1,
  kOW = 1u << 2,
  kRM = 1u << 3,
  kAccess = 1u << 4,
  kUpdate = 1u << 5,
  kInsert = 1u << 6,
  kDelete = 1u << 7,
  kNotKey = 1u << 8,
  kIncomplete = 1u << 9,
  kVariableFlags = 1u << 10,
};
SLOTSHIFT_BITMASK_OPS(KeySpecFlag)

// Where the search for a spec's keys begins: at a fixed argument index, or just after a keyword found by
// scanning from `startfrom` (forwards if positive, backwards from the end if negative). kUnknown: the command
// must be parsed to know (SORT's BY/GET/STORE).
enum class BeginSearch : std::uint8_t { kUnknown, kIndex, kKeyword };
// How many keys follow: a range (`lastkey` relative to the first key, or from the end if negative; every
// `keystep`-th argument; with `limit` > 0, only 1/limit of the remaining arguments, as XREAD's STREAMS), or a
// count read from an argument (`keynumidx` relative to the begin, keys from `firstkey` every `keynum_step`).
enum class FindKeys : std::uint8_t { kUnknown, kRange, kKeynum };

struct KeySpec {
  KeySpecFlag flags{};
  BeginSearch begin_search = BeginSearch::kUnknown;
  int index = 0;             // kIndex
  std::string_view keyword;  // kKeyword, upper case as Redis reports it; compared case-insensitively
  int startfrom = 0;         // kKeyword
  FindKeys find_keys = FindKeys::kUnknown;
  int lastkey = 0;  // kRange
  int keystep = 0;
  int limit = 0;
  int keynumidx = 0;  // kKeynum
  int firstkey = 0;
  int keynum_step = 0;
};

// The functions Redis 7.0 falls back to when a command's key specs cannot answer (db.c's getkeys procs). Not
// reported by any server: gen_command_table.py lists them from Redis's source.
enum class KeysProc : std::uint8_t {
  kNone,
  kEval,                  // EVAL/EVALSHA/EVAL_RO/EVALSHA_RO script numkeys key...
  kFcall,                 // FCALL/FCALL_RO function numkeys key...
  kZunionInterDiff,       // ZUNION/ZINTER/ZDIFF numkeys key...
  kZunionInterDiffStore,  // ZUNIONSTORE/ZINTERSTORE/ZDIFFSTORE dest numkeys key...
  kSintercard,            // SINTERCARD/ZINTERCARD numkeys key...
  kLmpop,                 // LMPOP numkeys key...
  kBlmpop,                // BLMPOP timeout numkeys key...
  kZmpop,                 // ZMPOP numkeys key...
  kBzmpop,                // BZMPOP timeout numkeys key...
  kSort,                  // SORT key ... [STORE dest] ...
  kSortRo,                // SORT_RO key ...
  kMigrate,               // MIGRATE host port key|"" db timeout ... [KEYS key...]
  kGeoradius,             // GEORADIUS/GEORADIUSBYMEMBER ... [STORE|STOREDIST dest]
  kXread,                 // XREAD/XREADGROUP ... STREAMS key... id...
  kSet,                   // SET key ... (flags depend on GET)
  kBitfield,              // BITFIELD key ... (flags depend on the operations)
};

// One command or subcommand. Subcommands are named as Redis names them: "container|sub" ("config|get").
struct CommandInfo {
  std::string_view name;  // lower case
  int arity = 0;          // argc including the name (and the subcommand); negative: at least -arity
  CommandFlag flags{};
  AclCategory acl{};
  int first_key = 0;  // the legacy key range; 0 when the command has no keys at fixed positions
  int last_key = 0;
  int key_step = 0;
  std::span<const KeySpec> key_specs;
  std::span<const std::string_view> tips;    // "nondeterministic_output", "request_policy:all_shards", ...
  std::string_view group;                    // COMMAND DOCS group: "string", "generic", "server", ...
  std::string_view since;                    // COMMAND DOCS since: "7.4.0"
  std::span<const CommandInfo> subcommands;  // sorted by name; empty for plain commands
  KeysProc keys_proc = KeysProc::kNone;

  bool is_container() const { return !subcommands.empty(); }
  bool has_flag(CommandFlag f) const { return has(flags, f); }
};

// Every top-level command, sorted by name.
std::span<const CommandInfo> all_commands();

// Looks a command up by name, case-insensitively. Allocation-free: the name is lower-cased into a stack
// buffer and searched in the sorted table (8 comparisons for 250 commands). nullptr if unknown.
const CommandInfo* find_command(std::string_view name);

// Looks up what argv runs: for a container command (CONFIG, CLIENT, XINFO, ...) with a second argument, the
// subcommand argv[1] names (nullptr if it names none); otherwise the command argv[0] names. As Redis's
// lookupCommand does: "CONFIG" alone resolves to the container, whose arity then refuses it.
const CommandInfo* find_command(std::span<const std::string_view> argv);

// Whether argc (the number of arguments, including the command name) satisfies the command's arity.
inline bool arity_ok(const CommandInfo& cmd, std::size_t argc) {
  return cmd.arity >= 0 ? argc == static_cast<std::size_t>(cmd.arity)
                        : argc >= static_cast<std::size_t>(-static_cast<long>(cmd.arity));
}

// Whether the command can have key arguments at all (Redis's doesCommandHaveKeys): a getkeys proc or a key
// spec that is not kNotKey. For the others COMMAND GETKEYS answers "The command has no key arguments".
bool has_keys(const CommandInfo& cmd);

enum class KeysError {
  kNone,
  // The key layout is malformed, so the server would refuse the command: numkeys not an integer, negative,
  // zero where a key is required, or larger than the arguments; XREAD with no STREAMS or an odd count after
  // it; no key where one is required. COMMAND GETKEYS answers "Invalid arguments specified for command" to
  // most of these.
  kSyntax,
  kUnknownCommand,  // argv[0] (or the subcommand) is not in the table
  kArity,           // wrong number of arguments for the command
};

// Finds the arguments of `argv` (argv[0] is the command name) that are keys, as argument indexes in the order
// Redis's COMMAND GETKEYS gives them (a key named twice is listed twice). `out` is cleared first and reused,
// so the hot path allocates only when a command has more keys than ever before. On an error `out` is empty.
//
// It follows Redis 7's getKeysFromCommandWithSpecs: the key specs when they are complete and their flags
// fixed, else the command's own getkeys function (SORT's STORE, MIGRATE's KEYS, ...). Deliberately stricter
// than GETKEYS where GETKEYS is lenient but the command itself refuses: numkeys must be a strict integer
// (GETKEYS's fallback uses atoi), a bad numkeys of EVAL/FCALL is kSyntax (GETKEYS answers an empty list), and
// XREAD with an odd number of arguments after STREAMS is kSyntax (GETKEYS returns the first half).
KeysError keys_of(const CommandInfo& cmd, std::span<const std::string_view> argv,
                  std::vector<std::size_t>& out);
// Same, looking the command up first.
KeysError keys_of(std::span<const std::string_view> argv, std::vector<std::size_t>& out);

struct KeysResult {
  std::vector<std::size_t> keys;
  KeysError error = KeysError::kNone;
};
// Convenience form that allocates its result.
KeysResult keys_of(std::span<const std::string_view> argv);

}  // namespace slotshift

#undef SLOTSHIFT_BITMASK_OPS
