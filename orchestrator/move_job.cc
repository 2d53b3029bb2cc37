#include "orchestrator/move_job.h"

#include <fcntl.h>
#include <unistd.h>
#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <future>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/server_info.h"
#include "common/topology.h"
#include "orchestrator/cluster_check.h"
#include "orchestrator/fault_injection.h"
#include "orchestrator/journal.h"
#include "orchestrator/native_migration.h"

namespace slotshift {

using std::chrono::duration_cast;
using std::chrono::milliseconds;

std::atomic<int> g_move_interrupted{0};

extern "C" void on_move_interrupt(int sig) {
  g_move_interrupted.store(sig);
}

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

std::string with_commas(std::uint64_t n) {
  const std::string digits = std::to_string(n);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

std::optional<std::vector<std::uint64_t>> count_keys(NodeClient& c, const std::vector<Slot>& slots) {
  std::vector<std::vector<std::string>> counts;
  counts.reserve(slots.size());
  for (const Slot s : slots)
    counts.push_back({"CLUSTER", "COUNTKEYSINSLOT", std::to_string(s)});
  auto replies = c.pipeline(counts);
  if (!replies) return std::nullopt;
  std::vector<std::uint64_t> out;
  out.reserve(replies->size());
  for (const auto& r : *replies)
    out.push_back(static_cast<std::uint64_t>(std::max<std::int64_t>(r.integer, 0)));
  return out;
}

std::string join(const std::vector<std::string>& parts, const std::string& separator) {
  std::string out;
  for (const auto& p : parts)
    out += (out.empty() ? "" : separator) + p;
  return out;
}

std::vector<HostPort> every_node(const Topology& topology) {
  std::vector<HostPort> out;
  for (const auto& n : topology.nodes)
    out.push_back(address_of(n));
  return out;
}

bool MoveJob::lease_lost() const {
  return lease_ && !lease_->confirm();
}

void MoveJob::stopped_without_lease() {
  for (auto& src : sources_)
    if (src.copier) src.copier->stop();
  // A group's claimed batches, never handed off (nothing more is sent): their holds end by their ttl.
  for (const auto i : deferred_)
    batch_ended(*deferred_source_, deferred_source_->batches[i]);
  deferred_.clear();
  // The failure that stopped the move may be the lease itself (said once), or what its loss brought about (a
  // connection the takeover closed), said first.
  const std::string reason = lease_->lost_reason();
  std::string first = error_.find(reason) == std::string::npos ? error_ : std::string();
  error_ =
      (first.empty() ? "" : first + "; ") + "this move no longer holds its lease (" + reason +
      "), so it stopped where it was and undid nothing: slotshift status shows the move that holds the "
      "nodes now" +
      (journal_path_.empty() ? std::string()
                             : "; if none does, run slotshift resume or abort --journal " + journal_path_);
}

bool MoveJob::interrupted() {
  if (const int sig = g_move_interrupted.load()) {
    fail(std::string("interrupted by ") + (sig == SIGINT ? "SIGINT" : "SIGTERM"));
    return true;
  }
  if (lease_ && !lease_->held()) {
    fail(lease_->lost_reason() + "; the move stops");
    return true;
  }
  return false;
}

// The journal: --journal, or a file of its own in journal_dir(), named after the move. Said on stderr at the
// start, so that whoever has to resume or abort the move knows where it is.
bool MoveJob::open_journal() {
  std::string path = options_.journal;
  if (path.empty()) {
    const std::string dir = journal_dir();
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    path = dir + "/" + move_id_ + ".journal";
  }
  journal_fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (journal_fd_ < 0) {
    err_ << "slotshift move: cannot open the journal " << path << ": " << std::strerror(errno)
         << " (--journal names another file)\n";
    return false;
  }
  journal_path_ = path;
  err_ << "slotshift move: journal " << path << " (slotshift resume|abort --journal " << path
       << " after a crash)\n";
  return true;
}

// One record, on disk before the step it names is acted on: written in one call and synced, so that a
// crash leaves either the whole line or none of it.
void MoveJob::journal(MoveStep step, const nlohmann::json& fields) {
  // The journal is the lease holder's: once this move may have lost its lease, a recovery may be appending
  // to the same file, and a record of ours would tell the next reader of a step the nodes never saw. The
  // lease's clock only (MoveLease::held), as the records of a batch are written inside its pause.
  if (journal_fd_ >= 0 && (!lease_ || lease_->held())) {
    nlohmann::json j = fields;
    j["step"] = step_name(step);
    j["version"] = kJournalVersion;
    j["move"] = move_id_;
    j["time_ms"] = duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    const std::string line = j.dump() + "\n";
    if (::write(journal_fd_, line.data(), line.size()) != static_cast<ssize_t>(line.size()) ||
        ::fdatasync(journal_fd_) != 0)
      warnings_.push_back("writing the journal " + journal_path_ + " failed: " + std::strerror(errno));
  }
  fault::at_step(step_name(step));
}

void MoveJob::progress(const char* phase, const std::string& line, std::size_t batch, std::size_t planned) {
  MoveProgress now;
  now.phase = phase;
  // The last batch begun stays the figure after the cutovers, through cleaning and settling.
  if (batch > 0) progress_batch_ = {batch, planned};
  now.batch = progress_batch_.first;
  now.batches_planned = progress_batch_.second;
  for (const auto& src : sources_) {
    now.slots += src.slots.size();
    now.slots_moved += std::count_if(src.slots.begin(), src.slots.end(), [&](Slot s) { return claimed_[s]; });
    now.keys_estimated += src.estimated_keys;
    // The servers carry the values of a native move: what is known is what each batch counted before it
    // moved.
    for (const auto& b : src.batches)
      if (native_ && !b.slots.empty() && claimed_[b.slots.front()]) now.keys_copied += b.source_keys;
    if (!src.copier) continue;
    const auto& st = src.copier->stats();
    now.keys_copied += st.keys_copied.load();
    now.bytes_copied += st.bytes_copied.load();
    now.snapshot_bytes += st.rdb_bytes.load();
    now.stream_operations += st.stream_applied.load();
    now.lag_bytes += src.copier->lag_bytes();
  }
  for (auto& o : observers_)
    o->on_progress(now, line);
}

NodeClient* MoveJob::control(const Node& node) {
  auto it = controls_.find(node.id);
  // A connection that failed (a node that stalled past the timeout, a dropped link) is replaced.
  if (it != controls_.end() && !it->second.usable()) {
    controls_.erase(it);
    it = controls_.end();
  }
  if (it == controls_.end()) {
    NodeClient c;
    if (!c.connect(HostPort{node.address(), node.port}, options_.common.timeout,
                   options_.common.credentials)) {
      connect_error_ = c.error();
      return nullptr;
    }
    it = controls_.emplace(node.id, std::move(c)).first;
  }
  return &it->second;
}

bool MoveJob::prepare() {
  // The proxies' connections, which the first batch would otherwise open inside its own hold (with 200
  // proxies on one machine, a third of that batch), while the target's IMPORTING is set and the sources write
  // their snapshots: this process mostly waits then, and a fleet on the mover's own cores gets them (from
  // the copy's start on, the warm-up outlasted the copy there, and the first batch waited for it). A copy
  // that outlasts a kept connection's idle limit has them opened again at the first batch.
  if (proxies_)
    warming_ = std::async(std::launch::async, [this] {
      const auto t = Clock::now();
      auto refused = proxies_->warm_up(target_address_);
      warm_up_ms_ = ms_since(t);
      return refused;
    });
  // IMPORTING on the target only. The source is not touched: it keeps serving every key of these slots and
  // never answers ASK, so clients see nothing of the copy.
  std::vector<std::vector<std::string>> cmds;
  std::vector<Slot> slots;
  for (const auto& src : sources_)
    for (const Slot s : src.slots) {
      cmds.push_back({"CLUSTER", "SETSLOT", std::to_string(s), "IMPORTING", src.node.id});
      slots.push_back(s);
    }
  journal(MoveStep::kImporting, {{"target", target_.id}, {"slots", format_slot_ranges(slot_ranges(slots))}});
  std::vector<std::vector<std::vector<std::string>>> groups;
  for (auto& c : cmds)
    groups.push_back({std::move(c)});
  // Marked first: if the run fails half way, rollback() clears whatever did get IMPORTING.
  for (const Slot s : slots)
    importing_[s] = true;
  if (const auto error = setslots(groups)) return fail("on the target: " + *error);
  // Keys the target's replicas hold in these slots are left over from an earlier move off a Redis 7.0 master
  // (see purge_replica_keys); they would outlive the copy on the replicas. Remove them first.
  std::uint64_t purged = 0;
  if (!purge_replica_keys(target_, "", slots, false, purged)) return false;
  if (purged > 0)
    notes_.push_back(
        "removed " + std::to_string(purged) +
        " stale keys of the moving slots from the target's replicas, left over from an earlier move");
  return true;
}

bool MoveJob::copy() {
  for (auto& src : sources_) {
    CopierOptions o;
    o.source = src.address;
    o.target = target_address_;
    o.credentials = options_.common.credentials;
    o.diskless = options_.diskless;
    if (src.info.flavor == ServerInfo::Flavor::kValkey) o.announce_version = src.info.version;
    o.big_key = options_.big_key;
    o.spool_memory = options_.spool_memory;
    o.spool_dir = options_.spool_dir;
    o.timeout = options_.common.timeout;
    src.copier = std::make_unique<SlotCopier>(o, src.slots);
    journal(MoveStep::kCopy, {{"source", src.node.id}});
    if (!src.copier->start()) return fail(src.copier->error());
  }
  const auto t0 = Clock::now();
  // The end of the snapshots is looked for every 10 ms (the cutover starts then; a 100 ms look cost each move
  // 50 ms on average, and made its time vary by as much), a progress line made every 100 ms.
  auto reported = t0 - milliseconds(100);
  for (;;) {
    bool done = true;
    std::uint64_t keys = 0, bytes = 0, rdb = 0, estimated = 0;
    for (auto& src : sources_) {
      if (src.copier->failed()) return fail(copier_failure(src));
      const auto& st = src.copier->stats();
      done &= st.rdb_done.load();
      keys += st.keys_copied.load();
      bytes += st.bytes_copied.load();
      rdb += st.rdb_bytes.load();
      estimated += src.estimated_keys;
    }
    if (interrupted()) return false;
    if (!done && Clock::now() - reported < milliseconds(100)) {
      std::this_thread::sleep_for(milliseconds(10));
      continue;
    }
    reported = Clock::now();
    char line[200];
    std::snprintf(line, sizeof line, "copy  %s/%s keys  %s of values  %s of snapshots read  %.1f s",
                  with_commas(keys).c_str(), with_commas(estimated).c_str(),
                  human_bytes(static_cast<double>(bytes)).c_str(),
                  human_bytes(static_cast<double>(rdb)).c_str(), ms_since(t0) / 1000);
    progress("copy", line);  // the last one with the copy's final figures
    if (done) break;
    std::this_thread::sleep_for(milliseconds(10));
  }
  copy_s_ = ms_since(t0) / 1000;
  journal(MoveStep::kCopied);
  return true;
}

bool MoveJob::cut_over_all() {
  proxies_ready();
  // Before any client is held.
  note_target_refusals(target_refused_);
  std::size_t done = 0;
  // Keys and bytes per slot come from the snapshot.
  auto plan = [&](const Source& s) {
    return sizer_.plan(
        s.slots, [&](Slot slot) { return s.copier->slot_keys(slot); },
        [&](Slot slot) { return s.copier->slot_bytes(slot); }, claimed_);
  };
  for (auto& src : sources_) {
    // One batch at a time: each is planned from the slots left, with the delete speed measured so far.
    for (auto pending = plan(src); !pending.empty();) {
      std::size_t total = done + pending.size();
      for (std::size_t i = &src - sources_.data() + 1; i < sources_.size(); ++i)
        total += plan(sources_[i]).size();
      Batch batch = std::move(pending.front());
      char line[200];
      // The total is a plan, made again at each batch from the slots left and the speed measured so far (the
      // batch sizer grows batches as pauses allow): "of ~", not a count.
      std::snprintf(line, sizeof line, "cutover  batch %zu of ~%zu  %zu slots  %s keys  lag %s", done + 1,
                    total, batch.slots.size(), with_commas(batch.keys).c_str(),
                    human_bytes(static_cast<double>(src.copier->lag_bytes())).c_str());
      progress("cutover", line, done + 1, total);
      bool retry = false;
      const bool hand_off_later = proxies_ != nullptr;
      // The hold a HOLD of the batch's own places: its slots, and a group's (hold_span()).
      const PlacedHold fresh = hold_cover(batch, pending, 1);
      bool claimed = cut_over(src, batch, hand_off_later, retry, fresh);
      while (!claimed && retry && batch.attempts < 3)
        claimed = cut_over(src, batch, hand_off_later, retry, fresh);
      if (!claimed && retry)
        fail("batch " + format_slot_ranges(slot_ranges(batch.slots)) + " was given up " +
             std::to_string(batch.attempts) + " times before its claim (" + warnings_.back() + ")");
      bool deferred = false;
      if (claimed) {
        // Planned now that the sizer has this batch's pause; the next hold goes with this one's handoff (the
        // next batch of another source holds on its own, after this source's copier stops).
        pending = plan(src);
        if (hand_off_later) {
          // Under a group's hold, its next batch is the next one planned, cut to what the hold covers (the
          // sizer plans larger batches as it learns): its handoff waits for the group's last batch. A batch
          // handed off while the source learnt (cut_over()) ends its group, as does one after which the hold
          // covers nothing planned.
          // A group runs its planned number of batches at most, and none past the age at which the next
          // cut_over() would give its hold back (handing off here costs one call; later, three).
          if (!batch.handed_off && hold_in_force_ && hold_in_force_->batches > 1 &&
              hold_in_force_->used < hold_in_force_->batches && !pending.empty() &&
              Clock::now() - hold_in_force_->answered < options_.pause_timeout / 4) {
            Batch& next = pending.front();
            std::size_t covered = 0;
            while (covered < next.slots.size() && hold_in_force_->cover[next.slots[covered]])
              ++covered;
            if (covered > 0) {
              if (covered < next.slots.size()) {
                // The rest stays planned as a batch of its own, so that the plan still covers every slot.
                Batch rest;
                rest.slots.assign(next.slots.begin() + static_cast<std::ptrdiff_t>(covered),
                                  next.slots.end());
                next.slots.resize(covered);
                for (Batch* b : {&next, &rest}) {
                  b->keys = b->bytes = 0;
                  for (const Slot s : b->slots) {
                    b->keys += src.copier->slot_keys(s);
                    b->bytes += src.copier->slot_bytes(s);
                  }
                }
                pending.insert(pending.begin() + 1, std::move(rest));
              }
              deferred = true;
            }
          }
          if (deferred) {
            placed_hold_ = std::move(hold_in_force_);
            hold_in_force_.reset();
          } else {
            // (Handed off while the source learnt, a group has let go of its rest already: cut_over().)
            const bool carries = !batch.handed_off;
            std::optional<PlacedHold> next;
            if (!pending.empty()) next = hold_cover(pending.front(), pending, 1);
            hand_off(batch, next ? &*next : nullptr);
            // What a group's hold covered that is neither claimed nor held again by the next hold is let go
            // (a group that ended before its planned batches, or one the sizer planned otherwise since).
            if (carries && hold_in_force_) end_hold(*hold_in_force_, {}, next ? &*next : nullptr);
          }
        }
      }
      src.batches.push_back(std::move(batch));
      if (deferred) {
        deferred_source_ = &src;
        deferred_.push_back(src.batches.size() - 1);
      } else {
        batch_ended(src, src.batches.back());
      }
      if (!claimed) return false;
      // A group's clients stay held while its batches are verified: a node slow to agree has them handed off
      // first, and the group ends there (the next batch holds on its own).
      auto end_group = [&] {
        if (deferred_.empty()) return;
        end_hold(*placed_hold_);  // the group's own: it is kept in placed_hold_ while it lasts
        placed_hold_.reset();
      };
      if (!verify(src.batches.back(), end_group)) return false;
      batch_span_ms_ = std::max(0.0, ms_since(batch_started_) - batch_fleet_ms_);
      ++done;
    }
    src.copier->stop();
  }
  return true;
}

bool MoveJob::verify(const Batch& batch, const std::function<void()>& slow) {
  // Every node names the target as the owner of every slot of the batch, nothing of it is open, and the
  // target's config epoch is the largest and no other master has it.
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::seconds(10);
  bool told = !slow;
  std::string problem;
  for (const auto& node : topology_.nodes) {
    if (node.port == 0 || node.in_handshake()) continue;
    for (;;) {
      problem.clear();
      auto* c = control(node);
      auto nodes = c ? c->command({"CLUSTER", "NODES"}) : std::nullopt;
      const auto view = nodes && !nodes->is_error() ? parse_cluster_nodes(*nodes) : TopologyResult{};
      if (!nodes || nodes->is_error() || !view.ok()) {
        problem = "cannot read CLUSTER NODES";
      } else {
        for (const Slot s : batch.slots) {
          const Node* o = view.topology.owner(s);
          if (!o || o->id != target_.id) {
            problem = "names " + (o ? short_id(o->id) : std::string("nobody")) + " as the owner of slot " +
                      std::to_string(s);
            break;
          }
          const Node* me = view.topology.myself();
          if (me && (me->migrating.count(s) || me->importing.count(s))) {
            problem = "has slot " + std::to_string(s) + " open";
            break;
          }
        }
        const Node* t = view.topology.find(target_.id);
        if (problem.empty() && t && t->config_epoch)
          for (const auto* m : view.topology.masters())
            if (m->id != target_.id && m->config_epoch && *m->config_epoch >= *t->config_epoch) {
              problem = "gives master " + short_id(m->id) + " config epoch " +
                        std::to_string(*m->config_epoch) + ", not below the target's " +
                        std::to_string(*t->config_epoch);
              break;
            }
      }
      if (problem.empty()) break;
      if (!told && Clock::now() - t0 > options_.max_pause) {
        told = true;
        slow();
      }
      if (Clock::now() > deadline)
        return fail("after the claim of " + format_slot_ranges(slot_ranges(batch.slots)) + ", node " +
                    node.address() + ":" + std::to_string(node.port) + " " + problem + " (10 s later)");
      std::this_thread::sleep_for(milliseconds(1));
    }
  }
  return true;
}

// Replicas can hold keys of slots their master does not own: Redis 7.0 deletes a lost slot's keys without
// telling its replicas (REDIS-FACTS.md, "Cutover"), so after a move its replicas keep the moved keys, and if
// the slots ever come back those stale keys (deleted ones included) would be served again by a promoted
// replica. Nothing can write to a replica directly, so the deletes go through its master: with the slot in
// IMPORTING there, a script called after ASKING creates and removes each key; the replica applies both (a
// script's writes reach it as MULTI SET DEL EXEC) and ends without it, and the master is left with nothing
// (the script is atomic). Keys are listed from the replicas themselves, once they have caught up with their
// master.
bool MoveJob::purge_replica_keys(const Node& master, const std::string& importing_from,
                                 const std::vector<Slot>& slots, bool set_importing, std::uint64_t& purged) {
  purged = 0;
  const auto replicas = topology_.replicas_of(master.id);
  if (replicas.empty() || slots.empty()) return true;
  auto* m = control(master);
  if (!m) return fail("cannot connect to " + connect_error_);
  auto info = m->command({"INFO", "replication"});
  const auto offset = info && !info->is_error() ? info_integer(info->str, "master_repl_offset") : -1;
  std::vector<std::string> keys;
  for (const auto* r : replicas) {
    auto* c = control(*r);
    if (!c) {
      warnings_.push_back("could not reach replica " + r->address() + ":" + std::to_string(r->port) +
                          " to check it for keys of the moved slots");
      continue;
    }
    // Caught up first, so that it holds everything its master had.
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    for (;;) {
      auto ri = c->command({"INFO", "replication"});
      if (ri && !ri->is_error() && info_integer(ri->str, "slave_repl_offset") >= offset) break;
      if (Clock::now() > deadline) break;
      std::this_thread::sleep_for(milliseconds(5));
    }
    const auto n = count_keys(*c, slots);
    if (!n) return fail(c->error());
    for (std::size_t i = 0; i < slots.size(); ++i) {
      if ((*n)[i] == 0) continue;
      auto k = c->command({"CLUSTER", "GETKEYSINSLOT", std::to_string(slots[i]), std::to_string((*n)[i])});
      if (!k || k->is_error()) return fail(c->error());
      for (auto& e : k->elements)
        keys.push_back(std::move(e.str));
    }
  }
  if (keys.empty()) return true;
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  std::vector<std::vector<std::string>> cmds;
  if (set_importing)
    for (const Slot s : slots)
      cmds.push_back({"CLUSTER", "SETSLOT", std::to_string(s), "IMPORTING", importing_from});
  auto run = [&]() {
    if (cmds.empty()) return true;
    auto replies = m->pipeline(cmds);
    if (!replies) return fail(m->error());
    for (std::size_t i = 0; i < replies->size(); ++i)
      if ((*replies)[i].is_error())
        return fail("removing stale keys from the replicas of " + master.address() + ":" +
                    std::to_string(master.port) + ": " + join(cmds[i]) + ": " + (*replies)[i].str);
    cmds.clear();
    return true;
  };
  if (!run()) return false;
  // One script call per key does what MULTI SET DEL EXEC does (a script's writes reach the replicas as one
  // MULTI ... EXEC) in two commands instead of five.
  static const std::string kSetDel = "redis.call('SET', KEYS[1], '') return redis.call('DEL', KEYS[1])";
  for (const auto& k : keys) {
    cmds.push_back({"ASKING"});
    cmds.push_back({"EVAL", kSetDel, "1", k});
    if (cmds.size() >= 5000 && !run()) return false;
  }
  if (set_importing)
    for (const Slot s : slots)
      cmds.push_back({"CLUSTER", "SETSLOT", std::to_string(s), "STABLE"});
  if (!run()) return false;
  purged = keys.size();
  // Let the replicas apply it, and check.
  info = m->command({"INFO", "replication"});
  const auto after = info && !info->is_error() ? info_integer(info->str, "master_repl_offset") : -1;
  for (const auto* r : replicas) {
    auto* c = control(*r);
    if (!c) continue;
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    for (;;) {
      auto ri = c->command({"INFO", "replication"});
      if (ri && !ri->is_error() && info_integer(ri->str, "slave_repl_offset") >= after) break;
      if (Clock::now() > deadline) {
        warnings_.push_back("replica " + r->address() + ":" + std::to_string(r->port) +
                            " did not catch up within 10 s; it may still hold stale keys of the moved slots");
        break;
      }
      std::this_thread::sleep_for(milliseconds(5));
    }
  }
  return true;
}

bool MoveJob::clean_source_replicas() {
  for (const auto& src : sources_) {
    if (src.info.propagates_lost_slot_deletes()) continue;
    // A source left without slots has become a replica of the target and resynchronised from it, and so
    // have its replicas: nothing stale is left there.
    auto* c = control(src.node);
    auto role = c ? c->command({"ROLE"}) : std::nullopt;
    if (!role || role->is_error() || role->elements.empty() || role->elements[0].str != "master") continue;
    // Only what the target owns: a move that stopped part way leaves the rest with the source.
    std::vector<Slot> lost;
    std::copy_if(src.slots.begin(), src.slots.end(), std::back_inserter(lost),
                 [&](Slot s) { return claimed_[s]; });
    std::uint64_t purged = 0;
    if (!purge_replica_keys(src.node, target_.id, lost, true, purged)) return false;
    if (purged > 0) {
      journal(MoveStep::kReplicasCleaned, {{"source", src.node.id}, {"keys", purged}});
      notes_.push_back("removed " + std::to_string(purged) + " moved keys from the replicas of " +
                       src.address.str() + " (" + src.info.name() +
                       " does not send the deletes of a lost slot to its replicas)");
    }
  }
  return true;
}

// After the last batch: the whole cluster as `slotshift check` sees it. A source left without slots turns
// itself into a replica of the target, and the other nodes learn that by gossip, so give them a moment.
bool MoveJob::settle() {
  const auto deadline = Clock::now() + std::chrono::seconds(15);
  std::string last;
  for (;;) {
    std::string error;
    const auto survey = survey_cluster(*parse_host_port(options_.common.cluster, error),
                                       options_.common.timeout, options_.common.credentials);
    auto findings = check(survey.merged);
    for (auto& f : compare_views(survey.views))
      findings.push_back(std::move(f));
    std::erase_if(findings, [](const Finding& f) { return f.kind == FindingKind::kNodeLoading; });
    if (survey.complete() && findings.empty()) return true;
    last = !survey.error.empty()         ? survey.error
           : !survey.unreachable.empty() ? "unreachable: " + survey.unreachable.front()
           : !survey.loading.empty()
               ? survey.loading.front()
               : std::string(finding_kind_name(findings.front().kind)) + ": " + findings.front().message;
    if (Clock::now() > deadline) break;
    std::this_thread::sleep_for(milliseconds(25));
  }
  warnings_.push_back(
      "every slot moved and every node agrees on its owner, but 15 s later the cluster is still "
      "not clean: " +
      last);
  return true;
}

int MoveJob::run() {
  move_id_ = "move-" + std::to_string(::getpid()) + "-" +
             std::to_string(
                 duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  // Every connection of this move carries its name, and is checked against its lease once it has one (a
  // move resumed in the same process must not inherit the recovery's).
  options_.common.credentials.client_name = move_connection_name(move_id_);
  options_.common.credentials.lease_lost = nullptr;
  if (metrics_) {
    if (const auto error = metrics_->start(*options_.metrics); !error.empty()) {
      err_ << "slotshift move: " << error << "\n";
      return kExitUsage;
    }
  }
  if (!plan()) {
    // Refused before anything was touched; machines get that as JSON too.
    // A flag the plan found wrong is the user's to mend; anything else is the cluster as it is now.
    const int status = error_.starts_with("--") ? kExitUsage : kExitRefused;
    if (options_.common.json)
      out_ << nlohmann::json{{"ok", false},
                             {"error", error_},
                             {"refused_before_start", true},
                             {"exit_status", status},
                             {"outcome", exit_status_name(status)}}
                  .dump(2)
           << "\n";
    err_ << "slotshift move: " << error_ << "\n";
    return status;
  }
  if (options_.dry_run) {
    if (!estimate()) {
      err_ << "slotshift move: " << error_ << "\n";
      return kExitRefused;
    }
    print_plan();
    return kExitDone;
  }
  if (sources_.empty()) {
    notes_.push_back("nothing to move: every slot named is already on " + target_address_.str());
    report(true);
    return kExitDone;
  }
  // What the copy is expected to carry, for its progress line and --metrics: counted, not needed, so a move
  // whose count fails goes on without it (and fails on its own if a node is gone).
  if (!estimate()) error_.clear();
  if (!open_journal()) return kExitUsage;
  journal(MoveStep::kPlan, {{"lease", leased_.size()},
                            {"target", target_.id},
                            {"target_address", target_address_.str()},
                            {"slots", options_.slots},
                            {"engine", options_.engine},
                            {"proxies",
                             [&] {
                               auto a = nlohmann::json::array();
                               for (const auto& p : options_.proxies)
                                 a.push_back(p.str());
                               return a;
                             }()},
                            {"proxy_owner", owner_},
                            {"sources", [&] {
                               auto a = nlohmann::json::array();
                               for (const auto& s : sources_)
                                 a.push_back({{"id", s.node.id},
                                              {"address", s.address.str()},
                                              {"slots", format_slot_ranges(slot_ranges(s.slots))}});
                               return a;
                             }()}});
  for (auto& o : observers_)
    o->on_started({{"move", move_id_},
                   {"slots", options_.slots},
                   {"target", target_address_.str()},
                   {"target_id", target_.id},
                   {"engine", native_ ? "native" : "replica"},
                   {"fence", options_.fence},
                   {"journal", journal_path_}});
  struct sigaction action {};
  action.sa_handler = on_move_interrupt;
  struct sigaction old_int {
  }, old_term{};
  sigaction(SIGINT, &action, &old_int);
  sigaction(SIGTERM, &action, &old_term);
  g_move_interrupted = 0;

  // A phase, timed. Those with no progress lines of their own are announced as they start.
  auto timed = [this](double& seconds, const char* phase, const char* announce, auto&& step) {
    if (announce) progress(phase, announce);
    const auto t0 = Clock::now();
    const bool r = step();
    seconds = ms_since(t0) / 1000;
    return r;
  };
  const char* settling = "settle  until every node names the new owners";
  const bool ok = native_ ? timed(cutover_s_, "migrate", nullptr, [&] { return migrate_native_all(); }) &&
                                timed(settle_s_, "settle", settling, [&] { return settle(); })
                          : (progress("prepare", "prepare  IMPORTING on the target"), prepare()) && copy() &&
                                timed(cutover_s_, "cutover", nullptr, [&] { return cut_over_all(); }) &&
                                timed(cleanup_s_, "clean", "clean  the moved keys from the sources' replicas",
                                      [&] { return clean_source_replicas(); }) &&
                                timed(settle_s_, "settle", settling, [&] { return settle(); });
  // Asked of the nodes once before the undo, and again after it only if it ran.
  bool without_lease = !ok && lease_lost();
  if (without_lease) {
    // Whoever took the lease over owns the move now: an undo from here would unpause its sources, delete
    // its copied keys and clear its IMPORTING. Nothing more is sent; the journal is left as it is.
    stopped_without_lease();
  } else if (!ok) {
    rollback();
    // The batches claimed before the failure are moved: their keys go from the source's replicas as after a
    // move that went well.
    clean_source_replicas();
    without_lease = lease_lost();
  }
  if (ok) {
    exit_status_ = kExitDone;
    journal(MoveStep::kDone);
  } else if (without_lease) {
    exit_status_ = kExitUnfinished;
  } else {
    // The move ended by itself, its undo done: the journal says so, so that check does not take it for a
    // move that was killed. An undo left incomplete, or a source left refusing writes (its fence, until it
    // learns the claim), keeps the journal open for abort and fix.
    const bool fenced =
        std::any_of(sources_.begin(), sources_.end(), [](const Source& s) { return s.refusing; });
    journal(MoveStep::kAborted, {{"by", "the move itself"}, {"complete", undo_complete_ && !fenced}});
    exit_status_ = undo_complete_ && !fenced ? kExitFailed : kExitUnfinished;
  }
  report(ok);
  for (auto& src : sources_)
    if (src.copier) src.copier->stop();
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  return exit_status_;
}

int run_abort(const MoveOptions& options, std::ostream& out, std::ostream& err) {
  MoveJob job(options, out, err);
  return job.recover(false);
}

int run_resume(const MoveOptions& options, std::ostream& out, std::ostream& err) {
  MoveJob job(options, out, err);
  return job.recover(true);
}

int run_move(const MoveOptions& options, std::ostream& out, std::ostream& err) {
  MoveJob job(options, out, err);
  return job.run();
}

}  // namespace slotshift
