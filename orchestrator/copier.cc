#include "orchestrator/copier.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <map>

#include "common/ascii.h"
#include "common/command_table.h"
#include "common/rdb.h"
#include "common/resp.h"
#include "common/server_info.h"
#include "orchestrator/node_client.h"

namespace slotshift {

struct SlotCopier::Op {
  enum class Kind : std::uint8_t { kRestore, kStream, kRepair };
  Kind kind = Kind::kStream;
  std::int64_t offset_end = -1;   // stream operations: the offset after their last command
  std::vector<std::string> keys;  // for repairs and messages
};

namespace {

constexpr std::string_view kAsking = "*1\r\n$6\r\nASKING\r\n";
constexpr std::string_view kMulti = "*1\r\n$5\r\nMULTI\r\n";
constexpr std::string_view kExec = "*1\r\n$4\r\nEXEC\r\n";
// How many keys the copier may read again from the source over a whole move before it gives up: a stream
// that keeps failing on the target means something other than missing keys is wrong.
constexpr std::uint64_t kMaxRepairs = 1'000'000;

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Errors that say the target itself is not in the state the move needs, as opposed to a key whose value
// differs from the source's: nothing can be repaired then.
bool fatal_target_error(std::string_view error) {
  for (const std::string_view prefix :
       {"MOVED", "ASK", "READONLY", "OOM", "CLUSTERDOWN", "LOADING", "NOAUTH", "NOPERM", "MASTERDOWN"})
    if (error.starts_with(prefix)) return true;
  return false;
}

// The stream carries whatever the source accepted, so its limits are the server's own maximums.
resp::Limits stream_limits() {
  resp::Limits limits;
  limits.max_bulk_len = 4ull << 30;
  limits.max_elements = 1u << 30;
  return limits;
}

// The spool as the RDB reader's byte source. Waiting for bytes has no deadline of its own: the receiver
// closes the spool when the source goes silent for the idle timeout, and stop() closes it too.
class SpoolSource final : public rdb::ByteSource {
 public:
  explicit SpoolSource(Spool& spool) : spool_(spool) {}
  std::size_t read(char* dst, std::size_t n) override {
    for (;;) {
      const long got = spool_.read(dst, n, Clock::now() + std::chrono::milliseconds(200));
      if (got > 0) return static_cast<std::size_t>(got);
      if (got == 0) return 0;
    }
  }

 private:
  Spool& spool_;
};

}  // namespace

SlotCopier::SlotCopier(CopierOptions options, const std::vector<Slot>& slots)
    : options_(std::move(options)),
      slots_(slots),
      slot_keys_(kSlotCount),
      slot_bytes_(kSlotCount),
      slot_expiring_(kSlotCount),
      tx_scanner_(resp::Scanner::Mode::kRequest, stream_limits()) {
  for (auto& s : stop_at_)
    s.store(kNever);
  for (const Slot s : slots_)
    stop_at_[s].store(kOpen);
}

SlotCopier::~SlotCopier() {
  stop();
}

std::string SlotCopier::error() const {
  std::lock_guard lock(error_mu_);
  return error_;
}

void SlotCopier::finish(std::string error) {
  {
    std::lock_guard lock(error_mu_);
    if (error_.empty()) error_ = std::move(error);
  }
  failed_.store(true, std::memory_order_release);
}

bool SlotCopier::start() {
  started_ = Clock::now();
  source_control_ = std::make_unique<NodeClient>();
  target_control_ = std::make_unique<NodeClient>();
  if (!source_control_->connect(options_.source, options_.timeout, options_.credentials)) {
    finish("cannot connect to the source " + source_control_->error());
    return false;
  }
  if (!target_control_->connect(options_.target, options_.timeout, options_.credentials)) {
    finish("cannot connect to the target " + target_control_->error());
    return false;
  }
  TargetWriterOptions w;
  w.target = options_.target;
  w.credentials = options_.credentials;
  w.max_ops_in_flight = options_.max_ops_in_flight;
  w.max_bytes_in_flight = options_.max_bytes_in_flight;
  w.connect_timeout = options_.timeout;
  if (!writer_.connect(w, [this](std::uint64_t tag, std::string_view error) {
        // Outcomes come in submission order.
        Op op = std::move(ops_.front());
        ops_.pop_front();
        (void)tag;
        if (!error.empty()) {
          if (op.kind != Op::Kind::kStream || fatal_target_error(error)) {
            finish("the target " + options_.target.str() + " refused " +
                   (op.kind == Op::Kind::kStream ? "a replayed write" : "RESTORE") +
                   (op.keys.empty() ? "" : " of key '" + op.keys.front() + "'") + ": " + std::string(error));
          } else {
            failures_.push_back(std::move(op));
          }
          return;
        }
        if (!failures_.empty()) {
          // Applied after a refused operation: the applied offset stays where it is until the repair, and
          // handle_failures() looks at what this one touched.
          if (op.kind == Op::Kind::kStream) tainted_.push_back(std::move(op));
          return;
        }
        if (op.offset_end >= 0) set_applied(op.offset_end);
      })) {
    finish(writer_.error());
    return false;
  }

  // A diskless snapshot starts only after the source's repl-diskless-sync-delay (5 s by default), which
  // exists to let several replicas share one fork. Set it to 0 for the handshake and put it back as soon as
  // the snapshot has started; if the source does not allow CONFIG SET, the delay is paid.
  std::string old_delay;
  if (options_.diskless) {
    auto delay = source_control_->command({"CONFIG", "GET", "repl-diskless-sync-delay"});
    if (delay && !delay->is_error() && delay->elements.size() == 2 && delay->elements[1].str != "0") {
      auto set = source_control_->command({"CONFIG", "SET", "repl-diskless-sync-delay", "0"});
      if (set && !set->is_error()) old_delay = delay->elements[1].str;
    }
  }
  ReplicaLinkOptions l;
  l.source = options_.source;
  l.credentials = options_.credentials;
  l.diskless = options_.diskless;
  l.announce_version = options_.announce_version;
  l.step_timeout = options_.timeout;
  l.idle_timeout = options_.idle_timeout;
  l.spool_memory = options_.spool_memory;
  l.spool_dir = options_.spool_dir;
  const bool started = link_.start(l);
  if (!old_delay.empty()) {
    auto restored = source_control_->command({"CONFIG", "SET", "repl-diskless-sync-delay", old_delay});
    if (!restored || restored->is_error())
      finish("could not set repl-diskless-sync-delay back to " + old_delay + " on the source " +
             options_.source.str() + ": " + (restored ? restored->str : source_control_->error()) +
             "; set it by hand");
  }
  if (!started) {
    finish(link_.error());
    return false;
  }
  pos_ = boundary_ = link_.initial_offset();
  stats_.header_ms = std::chrono::duration<double, std::milli>(Clock::now() - started_).count();
  thread_ = std::thread([this] { run(); });
  return true;
}

void SlotCopier::stop() {
  stopping_ = true;
  link_.stop("the move stopped");
  if (thread_.joinable()) thread_.join();
  writer_.close();
}

void SlotCopier::close_slots(const std::vector<Slot>& slots, std::int64_t offset) {
  for (const Slot s : slots)
    stop_at_[s].store(offset, std::memory_order_release);
}

void SlotCopier::reopen_slots(const std::vector<Slot>& slots) {
  for (const Slot s : slots)
    stop_at_[s].store(kOpen, std::memory_order_release);
}

void SlotCopier::set_applied(std::int64_t offset) {
  if (offset <= applied_.load(std::memory_order_relaxed)) return;
  applied_.store(offset, std::memory_order_release);
  // The source counts a replica's ACKed offset for WAIT: a client's WAIT after a write is satisfied by any
  // replica that has ACKed the offset after it. slotshift drops the writes of the slots that do not move, so
  // it ACKs what the target has applied only up to the first write it dropped, and never past it.
  link_.set_applied_offset(std::min(offset, ack_cap_));
}

// A write of the stream that is not applied to the target (its slots do not move, or it has no key): from
// here on the ACKs stop short of where it began.
void SlotCopier::dropped(const Parsed& command) {
  const std::int64_t start =
      applying_transaction_ ? boundary_ : pos_ - static_cast<std::int64_t>(command.wire.size());
  ack_cap_ = std::min(ack_cap_, start);
}

bool SlotCopier::wait_applied(std::int64_t offset, Clock::time_point deadline) const {
  while (applied_offset() < offset) {
    if (failed() || Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  return true;
}

std::uint64_t SlotCopier::lag_bytes() const {
  if (!stats_.rdb_done.load()) return 0;
  const auto received = link_.received_offset(), applied = applied_offset();
  return received > applied ? static_cast<std::uint64_t>(received - applied) : 0;
}

double SlotCopier::lag_seconds() const {
  const auto now = Clock::now();
  const auto received = link_.received_offset(), applied = applied_offset();
  std::lock_guard lock(lag_mu_);
  if (lag_samples_.empty() || lag_samples_.back().second != received)
    lag_samples_.emplace_back(now, received);
  // The oldest sample the target has not reached yet tells since when the oldest unapplied byte waits.
  while (lag_samples_.size() > 1 && lag_samples_[1].second <= applied)
    lag_samples_.pop_front();
  if (lag_samples_.front().second <= applied) {
    if (lag_samples_.size() == 1) return 0;
    return std::chrono::duration<double>(now - lag_samples_[1].first).count();
  }
  return std::chrono::duration<double>(now - lag_samples_.front().first).count();
}

void SlotCopier::run() {
  if (copy_snapshot()) follow_stream();
  if (!failed() && !stopping_) finish("the copier stopped");
}

bool SlotCopier::submit(Op op, std::string_view wire, std::uint32_t replies) {
  ops_.push_back(std::move(op));
  if (!writer_.submit(wire, replies, next_tag_++)) {
    finish(writer_.error());
    return false;
  }
  if (failed()) return false;
  if (!failures_.empty()) return handle_failures();
  return true;
}

bool SlotCopier::copy_snapshot() {
  SpoolSource source(link_.spool());
  rdb::Reader reader(source);
  if (!reader.read_header()) {
    finish("the snapshot from " + options_.source.str() + ": " + reader.error());
    return false;
  }
  const auto version = static_cast<std::uint16_t>(reader.header().version);
  rdb_version_ = version;
  const std::string version_text = std::to_string(version);
  rdb::Entry entry;
  std::string wire, payload, ttl;
  std::vector<std::string_view> args;
  for (;;) {
    const auto result = reader.next(entry, [&](int db, std::string_view key) {
      return db == 0 && stop_at_[key_slot(key)].load(std::memory_order_relaxed) == kOpen;
    });
    stats_.rdb_bytes.store(reader.bytes_read(), std::memory_order_relaxed);
    if (result == rdb::Result::kError) {
      const std::string why = link_.spool().closed_error();
      finish("reading the snapshot from " + options_.source.str() + ": " +
             (why.empty() ? reader.error() : why));
      return false;
    }
    if (result == rdb::Result::kEnd) break;
    stats_.keys_seen.fetch_add(1, std::memory_order_relaxed);
    const Slot slot = key_slot(entry.key);
    if (!entry.kept) continue;
    if (entry.expire_ms >= 0) slot_expiring_[slot].fetch_add(1, std::memory_order_relaxed);
    if (entry.expire_ms >= 0 && entry.expire_ms <= now_ms()) {
      stats_.keys_expired.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    slot_keys_[slot].fetch_add(1, std::memory_order_relaxed);
    slot_bytes_[slot].fetch_add(entry.value_size + entry.key.size(), std::memory_order_relaxed);
    stats_.bytes_copied.fetch_add(entry.value_size, std::memory_order_relaxed);
    ttl = entry.expire_ms >= 0 ? std::to_string(entry.expire_ms) : "0";

    if (entry.value.size() > options_.big_key) {
      // A big value as chunks: DEL, then commands of at most chunk_bytes each, then the expiry. Types that
      // cannot be rebuilt from commands (streams, modules) fall through to one RESTORE.
      std::vector<std::vector<std::string>> commands;
      std::string why;
      if (rdb::rebuild_commands(
              entry.key, entry.type, entry.value, reader.header(), options_.chunk_bytes,
              [&](std::vector<std::string>&& c) { commands.push_back(std::move(c)); }, why)) {
        wire.assign(kAsking);
        resp::append_command(wire, {"DEL", entry.key});
        if (!submit(Op{Op::Kind::kRestore, -1, {entry.key}}, wire, 2)) return false;
        for (const auto& c : commands) {
          wire.assign(kAsking);
          args.assign(c.begin(), c.end());
          resp::append_command(wire, args);
          if (!submit(Op{Op::Kind::kRestore, -1, {entry.key}}, wire, 2)) return false;
        }
        if (entry.expire_ms >= 0) {
          wire.assign(kAsking);
          resp::append_command(wire, {"PEXPIREAT", entry.key, ttl});
          if (!submit(Op{Op::Kind::kRestore, -1, {entry.key}}, wire, 2)) return false;
        }
        stats_.keys_chunked.fetch_add(1, std::memory_order_relaxed);
        stats_.keys_copied.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
    }

    payload = rdb::dump_payload(entry.type, entry.value, version);
    args.clear();
    // RESTORE-ASKING is RESTORE with the `asking` flag (what MIGRATE sends): the target accepts it for an
    // IMPORTING slot without a separate ASKING, which would cost the target as much again per key (measured
    // on 7.0.15: 300,000 pipelined ASKING + RESTORE took 0.82 s, RESTORE alone 0.61 s).
    args.insert(args.end(), {"RESTORE-ASKING", entry.key, ttl, payload, "REPLACE"});
    if (entry.expire_ms >= 0) args.push_back("ABSTTL");
    std::string meta;
    if (entry.freq) {
      meta = std::to_string(*entry.freq);
      args.insert(args.end(), {"FREQ", meta});
    } else if (entry.idle_s) {
      meta = std::to_string(*entry.idle_s);
      args.insert(args.end(), {"IDLETIME", meta});
    }
    wire.clear();
    resp::append_command(wire, args);
    if (!submit(Op{Op::Kind::kRestore, -1, {entry.key}}, wire, 1)) return false;
    stats_.keys_copied.fetch_add(1, std::memory_order_relaxed);
  }

  // The framing: a disk-based payload has exactly the announced length; a diskless one ends with the mark.
  std::string rest(reader.unread());
  if (link_.payload_length() >= 0) {
    if (reader.bytes_read() != static_cast<std::uint64_t>(link_.payload_length())) {
      finish("the snapshot from " + options_.source.str() + " ended at byte " +
             std::to_string(reader.bytes_read()) + " of the " + std::to_string(link_.payload_length()) +
             " announced");
      return false;
    }
  } else {
    while (rest.size() < link_.eof_mark().size()) {
      char buf[64];
      const std::size_t n = source.read(buf, link_.eof_mark().size() - rest.size());
      if (n == 0) {
        finish("the diskless snapshot from " + options_.source.str() + " ended without its end mark");
        return false;
      }
      rest.append(buf, n);
    }
    if (rest.compare(0, link_.eof_mark().size(), link_.eof_mark()) != 0) {
      finish("the diskless snapshot from " + options_.source.str() + " is not followed by its end mark");
      return false;
    }
    rest.erase(0, link_.eof_mark().size());
  }
  stats_.received_ms = std::chrono::duration<double, std::milli>(Clock::now() - started_).count();
  if (!writer_.drain()) {
    finish(writer_.error());
    return false;
  }
  if (failed()) return false;
  set_applied(link_.initial_offset());
  stats_.applied_ms = std::chrono::duration<double, std::milli>(Clock::now() - started_).count();
  stats_.rdb_done.store(true, std::memory_order_release);
  stream_head_ = std::move(rest);
  return true;
}

bool SlotCopier::follow_stream() {
  std::string buf = std::move(stream_head_);
  std::size_t offset = 0;
  resp::Scanner scanner(resp::Scanner::Mode::kRequest, stream_limits());
  std::vector<std::string_view> args;
  std::vector<char> chunk(256 * 1024);
  while (!stopping_.load(std::memory_order_relaxed)) {
    const std::string_view rest = std::string_view(buf).substr(offset);
    const auto status = rest.empty() ? resp::Status::kIncomplete : scanner.scan(rest);
    if (status == resp::Status::kError) {
      finish("the write stream from " + options_.source.str() + " is not valid RESP: " + scanner.error());
      return false;
    }
    if (status == resp::Status::kComplete) {
      const std::size_t size = scanner.size();
      scanner.args(rest, args);
      pos_ += static_cast<std::int64_t>(size);
      stats_.stream_bytes.fetch_add(size, std::memory_order_relaxed);
      if (!process(Parsed{rest.substr(0, size), args})) return false;
      offset += size;
      scanner.reset();
      continue;
    }
    // Need more bytes. Before waiting for them, let the target answer what is in flight, so that the
    // applied offset catches up while the source is quiet.
    if (offset > 0) {
      buf.erase(0, offset);
      offset = 0;
    }
    long got = link_.spool().read(chunk.data(), chunk.size(), Clock::now());
    if (got < 0) {
      if (!drain()) return false;
      if (!in_transaction_) set_applied(boundary_);
      got = link_.spool().read(chunk.data(), chunk.size(), Clock::now() + std::chrono::milliseconds(100));
    }
    if (got == 0) {
      const std::string why = link_.spool().closed_error();
      finish(why.empty() ? "the replica link to " + options_.source.str() + " ended" : why);
      return false;
    }
    if (got > 0) {
      if (const auto hint = scanner.size_hint(); hint > buf.size()) buf.reserve(hint);
      buf.append(chunk.data(), static_cast<std::size_t>(got));
    }
  }
  return false;
}

bool SlotCopier::drain() {
  if (!writer_.drain()) {
    finish(writer_.error());
    return false;
  }
  if (failed()) return false;
  return failures_.empty() || handle_failures();
}

bool SlotCopier::process(const Parsed& command) {
  const auto& args = command.args;
  if (in_transaction_) {
    if (!args.empty() && iequals(args[0], "exec")) {
      in_transaction_ = false;
      const bool ok = apply_transaction();
      boundary_ = pos_;
      return ok;
    }
    transaction_.emplace_back(command.wire);
    return true;
  }
  boundary_ = pos_;
  if (args.empty()) return true;  // a lone newline
  const std::string_view name = args[0];
  bool ok = true;
  if (iequals(name, "multi")) {
    in_transaction_ = true;
    transaction_.clear();
    return true;
  } else if (iequals(name, "replconf")) {
    if (args.size() >= 2 && iequals(args[1], "getack")) {
      // A client's WAIT: answer with what the target really has (finishing what is in flight first), never
      // past a write that was dropped (set_applied()).
      if (!drain()) return false;
      set_applied(pos_);
      link_.send_ack();
    }
  } else if (iequals(name, "flushall") || iequals(name, "flushdb")) {
    ok = flush_moving_slots();
  } else if (!iequals(name, "ping") && !iequals(name, "select")) {
    ok = apply_commands({command});
  }
  // Nothing pending: everything consumed so far is applied or was not ours to apply.
  if (ok && ops_.empty() && failures_.empty()) set_applied(boundary_);
  return ok;
}

bool SlotCopier::apply_transaction() {
  std::vector<Parsed> pending;
  pending.reserve(transaction_.size());
  applying_transaction_ = true;
  struct Done {
    bool& flag;
    ~Done() { flag = false; }
  } done{applying_transaction_};
  for (const auto& wire : transaction_) {
    tx_scanner_.reset();
    if (tx_scanner_.scan(wire) != resp::Status::kComplete) continue;
    Parsed p{wire, tx_scanner_.args(wire)};
    if (p.args.empty()) continue;
    // A flush inside a transaction splits it: what came before, the flush, what comes after.
    if (iequals(p.args[0], "flushall") || iequals(p.args[0], "flushdb")) {
      if (!apply_commands(pending) || !flush_moving_slots()) return false;
      pending.clear();
      continue;
    }
    pending.push_back(std::move(p));
  }
  const bool ok = apply_commands(pending);
  transaction_.clear();
  return ok;
}

namespace {

// Whether a propagated command gives its key an expiry (the stream writes them absolute: SET ... PXAT,
// PEXPIREAT, RESTORE with a ttl).
bool sets_expiry(const CommandInfo& info, std::span<const std::string_view> args) {
  if (info.name == "pexpireat" || info.name == "expireat" || info.name == "pexpire" ||
      info.name == "expire" || info.name == "getex")
    return true;
  if (info.name == "restore") return args.size() > 2 && args[2] != "0";
  if (info.name == "set")
    for (std::size_t i = 3; i < args.size(); ++i)
      if (iequals(args[i], "pxat") || iequals(args[i], "exat") || iequals(args[i], "px") ||
          iequals(args[i], "ex"))
        return true;
  return false;
}

}  // namespace

// Sends the commands of one unit (a lone command, or the commands of one transaction) that concern slots
// still moving, as one operation ending at the current stream offset.
bool SlotCopier::apply_commands(const std::vector<Parsed>& commands) {
  struct Kept {
    const Parsed* command;
    const CommandInfo* info;
    std::vector<std::size_t> key_index;
  };
  std::vector<Kept> kept;
  std::vector<std::string> keys;
  for (const auto& c : commands) {
    Kept k{&c, find_command(c.args), {}};
    if (!k.info) {
      stats_.unknown_commands.fetch_add(1, std::memory_order_relaxed);
      dropped(c);
      continue;
    }
    if (keys_of(*k.info, c.args, k.key_index) != KeysError::kNone || k.key_index.empty()) {
      dropped(c);
      continue;
    }
    bool moving = false, late = false;
    for (const auto i : k.key_index) {
      const Slot slot = key_slot(c.args[i]);
      moving |= active(slot, pos_);
      const auto stop = stop_at_[slot].load(std::memory_order_acquire);
      late |= stop != kNever && stop != kOpen && pos_ > stop;
    }
    if (late && k.info->name != "del" && k.info->name != "unlink") {
      // A write to a slot past its fence: the source accepted it after the fence offset, so it is not on the
      // target. With the pause held through the claim this cannot happen; see survives_paused_claim().
      if (stats_.writes_after_fence.fetch_add(1) == 0) {
        std::lock_guard lock(error_mu_);
        first_late_write_ = std::string(c.args[0]) + " " + std::string(c.args[k.key_index.front()]);
      }
    }
    if (!moving) {
      dropped(c);
      continue;
    }
    for (const auto i : k.key_index)
      keys.emplace_back(c.args[i]);
    if (sets_expiry(*k.info, c.args))
      slot_expiring_[key_slot(c.args[k.key_index.front()])].fetch_add(1, std::memory_order_relaxed);
    kept.push_back(std::move(k));
  }
  if (kept.empty()) return true;
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());

  // Keys read again from the source after a refused command: their commands up to the offset of that read
  // are already in what was restored.
  if (!skip_.empty()) {
    std::size_t covered = 0;
    for (const auto& k : keys) {
      const auto it = skip_.find(k);
      if (it == skip_.end()) continue;
      if (pos_ <= it->second)
        ++covered;
      else
        skip_.erase(it);
    }
    if (covered == keys.size()) return true;
    if (covered > 0) {
      // Touches repaired keys and others: read all of them again, at an offset past this command.
      return repair(std::set<std::string>(keys.begin(), keys.end()));
    }
  }

  Op op{Op::Kind::kStream, pos_, std::move(keys)};
  std::string wire;
  std::uint32_t replies = 0;
  const auto& first = kept.front();
  if (kept.size() == 1 && first.key_index.size() > 1 &&
      (first.info->name == "del" || first.info->name == "unlink" || first.info->name == "mset" ||
       first.info->name == "msetnx")) {
    // DEL k1 k2 / MSET k1 v1 k2 v2: each key's effect is independent, and one command naming several keys
    // is refused with TRYAGAIN while any of them is missing on the target. (MSETNX is in the stream only when
    // it set every key, so it is an MSET here.)
    const auto& args = first.command->args;
    const bool set = first.info->name == "mset" || first.info->name == "msetnx";
    for (const auto i : first.key_index) {
      if (!active(key_slot(args[i]), pos_)) continue;
      wire.append(kAsking);
      if (set)
        resp::append_command(wire, {"SET", args[i], args[i + 1]});
      else
        resp::append_command(wire, {args[0], args[i]});
      replies += 2;
    }
  } else if (kept.size() == 1) {
    wire.append(kAsking);
    wire.append(first.command->wire);
    replies = 2;
  } else {
    // One ASKING before MULTI covers the whole block.
    wire.append(kAsking);
    wire.append(kMulti);
    for (const auto& k : kept)
      wire.append(k.command->wire);
    wire.append(kExec);
    replies = 3 + static_cast<std::uint32_t>(kept.size());
  }
  stats_.stream_applied.fetch_add(1, std::memory_order_relaxed);
  return submit(std::move(op), wire, replies);
}

bool SlotCopier::handle_failures() {
  if (!writer_.drain()) {
    finish(writer_.error());
    return false;
  }
  if (failed()) return false;
  // The refused operations' keys, and those of operations applied after the first refusal that touched any of
  // them (they may have carried a wrong value into their other keys). Reading a key again is always correct;
  // this only keeps the set small.
  std::set<std::string> keys;
  for (const auto& op : failures_)
    keys.insert(op.keys.begin(), op.keys.end());
  for (const auto& op : tainted_) {
    const bool touches =
        std::any_of(op.keys.begin(), op.keys.end(), [&](const auto& k) { return keys.count(k); });
    if (touches) keys.insert(op.keys.begin(), op.keys.end());
  }
  failures_.clear();
  tainted_.clear();
  return repair(keys);
}

bool SlotCopier::repair(const std::set<std::string>& keys) {
  stats_.repairs.fetch_add(keys.size(), std::memory_order_relaxed);
  if (stats_.repairs.load() > kMaxRepairs) {
    finish("more than " + std::to_string(kMaxRepairs) +
           " keys had to be read again from the source after the target refused replayed writes; the last "
           "refused key was '" +
           (keys.empty() ? std::string() : *keys.begin()) + "'");
    return false;
  }
  // One transaction per slot (a transaction cannot span slots in a cluster), each with the source's offset at
  // that moment.
  std::map<Slot, std::vector<std::string>> by_slot;
  for (const auto& k : keys)
    by_slot[key_slot(k)].push_back(k);
  auto& src = *source_control_;
  auto ok = [&](const std::optional<resp::Value>& r, const char* what) {
    if (r && !r->is_error()) return true;
    finish("reading keys again from the source " + options_.source.str() + ": " + what + ": " +
           (r ? r->str : src.error()));
    return false;
  };
  std::string wire;
  for (const auto& [slot, slot_keys] : by_slot) {
    if (!ok(src.command({"MULTI"}), "MULTI")) return false;
    for (const auto& k : slot_keys)
      if (!ok(src.command({"DUMP", k}), "DUMP") || !ok(src.command({"PEXPIRETIME", k}), "PEXPIRETIME"))
        return false;
    if (!ok(src.command({"INFO", "replication"}), "INFO")) return false;
    auto exec = src.command({"EXEC"});
    if (!ok(exec, "EXEC")) return false;
    if (exec->elements.size() != slot_keys.size() * 2 + 1) {
      finish("reading keys again from the source: EXEC returned " + std::to_string(exec->elements.size()) +
             " replies for " + std::to_string(slot_keys.size() * 2 + 1) + " commands");
      return false;
    }
    const std::int64_t offset = info_integer(exec->elements.back().str, "master_repl_offset");
    if (offset < 0) {
      finish("reading keys again from the source: no master_repl_offset in INFO replication");
      return false;
    }
    for (std::size_t i = 0; i < slot_keys.size(); ++i) {
      const auto& value = exec->elements[2 * i];
      const auto& expire = exec->elements[2 * i + 1];
      wire.assign(kAsking);
      if (value.null || !value.is_string())
        resp::append_command(wire, {"DEL", slot_keys[i]});
      else if (expire.integer >= 0)
        resp::append_command(
            wire, {"RESTORE", slot_keys[i], std::to_string(expire.integer), value.str, "REPLACE", "ABSTTL"});
      else
        resp::append_command(wire, {"RESTORE", slot_keys[i], "0", value.str, "REPLACE"});
      ops_.push_back(Op{Op::Kind::kRepair, -1, {slot_keys[i]}});
      if (!writer_.submit(wire, 2, next_tag_++)) {
        finish(writer_.error());
        return false;
      }
      skip_[slot_keys[i]] = offset;
    }
  }
  if (!writer_.drain()) {
    finish(writer_.error());
    return false;
  }
  if (failed()) return false;
  if (!in_transaction_) set_applied(boundary_);
  return true;
}

bool SlotCopier::flush_moving_slots() {
  if (!drain()) return false;
  auto& target = *target_control_;
  std::string wire;
  for (const Slot s : slots_) {
    if (!active(s, pos_)) continue;
    for (;;) {
      auto keys = target.command({"CLUSTER", "GETKEYSINSLOT", std::to_string(s), "1000"});
      if (!keys || keys->is_error()) {
        finish("FLUSHALL on the source: listing the target's keys of slot " + std::to_string(s) + ": " +
               (keys ? keys->str : target.error()));
        return false;
      }
      if (keys->elements.empty()) break;
      for (const auto& k : keys->elements) {
        wire.assign(kAsking);
        resp::append_command(wire, {"DEL", k.str});
        ops_.push_back(Op{Op::Kind::kRepair, -1, {k.str}});
        if (!writer_.submit(wire, 2, next_tag_++)) {
          finish(writer_.error());
          return false;
        }
      }
      if (!writer_.drain()) {
        finish(writer_.error());
        return false;
      }
      if (failed()) return false;
    }
  }
  skip_.clear();  // nothing of those slots is left to skip
  return true;
}

}  // namespace slotshift
