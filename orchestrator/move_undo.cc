#include "orchestrator/exit_status.h"
#include "orchestrator/move_job.h"

#include <fcntl.h>
#include <unistd.h>
#include <algorithm>
#include <cstring>
#include <memory>
#include <thread>

#include "common/server_info.h"
#include "common/topology.h"
#include "orchestrator/journal.h"

namespace slotshift {

using std::chrono::milliseconds;

void MoveJob::rollback() {
  // Undo what this move did for every slot it has not claimed: stop the copiers (nothing more is written),
  // unpause, let the proxies go, delete the copied keys on the target (ASKING makes them reachable while
  // IMPORTING is set), then clear IMPORTING.
  for (auto& src : sources_) {
    if (src.copier) src.copier->stop();
    unpause(src);
  }
  proxies_ready();
  // A group's claimed batches are the target's: their held commands go there, not to the old owner's MOVED.
  if (proxies_) hand_off_deferred();
  if (proxies_) note_proxy_failures(proxies_->release_owner(owner_));
  std::vector<Slot> open;
  for (int s = 0; s < kSlotCount; ++s)
    if (importing_[static_cast<std::size_t>(s)]) open.push_back(static_cast<Slot>(s));
  if (open.empty()) return;
  follow_target_failover();
  // Keys are deleted only in slots that the target does not own in its own view, whatever this run believes:
  // once the target owns a slot, the source drops its copy, and the target's is the only one left.
  auto view = target_view(open);
  if (!view.known) {
    undo_complete_ = false;
    warnings_.push_back("not undone: the target could not be asked which slots it owns (" + view.error +
                        "), so the copied keys of slots " + format_slot_ranges(slot_ranges(open)) +
                        " were left on it, in IMPORTING; run slotshift check");
    return;
  }
  for (const Slot s : view.owned) {
    importing_[s] = false;
    claimed_[s] = true;
  }
  if (!view.owned.empty())
    warnings_.push_back("slots " + format_slot_ranges(slot_ranges(view.owned)) +
                        " are the target's in its own view, though their claim was not seen to succeed: they "
                        "are moved, and their keys were kept");
  open = view.other;
  const std::vector<Slot> stay = open;  // with their sources: all of them, whether or not there is work to do
  if (open.empty()) return;
  // A fresh connection: the old one may have been the one that failed.
  if (!target_control_.connect(target_address_, options_.common.timeout, options_.common.credentials)) {
    undo_complete_ = false;
    warnings_.push_back("not undone: cannot reconnect to the target " + target_control_.error() +
                        "; the copied keys of slots " + format_slot_ranges(slot_ranges(open)) +
                        " are still on it; run slotshift check");
    return;
  }
  // A slot whose claim ran SETSLOT STABLE but not NODE has left IMPORTING, and ASKING no longer reaches its
  // keys: it is put back in IMPORTING (from its source) for the delete.
  // Slots the target has neither in IMPORTING nor holds keys of were never touched (a move killed before its
  // IMPORTING step, say): nothing to undo there.
  {
    std::vector<Slot> untouched;
    for (const Slot s : open)
      if (!view.importing.count(s)) untouched.push_back(s);
    if (const auto counts = untouched.empty() ? std::optional<std::vector<std::uint64_t>>{}
                                              : count_keys(target_control_, untouched))
      for (std::size_t i = 0; i < untouched.size(); ++i)
        if ((*counts)[i] == 0) {
          importing_[untouched[i]] = false;
          std::erase(open, untouched[i]);
        }
  }
  std::uint64_t deleted = 0;
  std::string delete_error;
  // The target may learn of a source's failover at any moment, also half way through the deletes: then the
  // slots lose their owner in its view (below) and the pass starts again from a new look at the target.
  for (int pass = 0; pass < 3; ++pass) {
    if (pass > 0) {
      view = target_view(open);
      if (!view.known) {
        delete_error = "the target could not be asked again (" + view.error + ")";
        break;
      }
    }
    bool lost_owner = false;
    // A slot the target imports from a source that has since failed over has no owner in the target's view:
    // the old source turned into a replica, which owns nothing, and a node ignores what gossip says of a slot
    // it imports, so it never learns the new owner, and answers CLUSTERDOWN even after ASKING. Such slots
    // leave IMPORTING first; once the target has learnt their owner they go back into IMPORTING from it,
    // below.
    std::vector<Slot> unbound;
    for (const Slot s : open)
      if (view.unbound.count(s)) unbound.push_back(s);
    if (!unbound.empty()) {
      std::vector<std::vector<std::vector<std::string>>> stable;
      for (const Slot s : unbound)
        stable.push_back({{"CLUSTER", "SETSLOT", std::to_string(s), "STABLE"}});
      setslots(stable);
      for (const auto until = Clock::now() + std::max(milliseconds(10000), node_timeout_);;) {
        const auto again = target_view(open);
        if (again.known && again.unbound.empty()) {
          view = again;
          break;
        }
        if (Clock::now() > until) {
          undo_complete_ = false;
          warnings_.push_back(
              "not undone: the target names no owner for slots " + format_slot_ranges(slot_ranges(unbound)) +
              " (their source failed over); their copied keys are still on it; run slotshift check");
          return;
        }
        std::this_thread::sleep_for(milliseconds(100));
      }
    }
    std::vector<std::vector<std::vector<std::string>>> reimport;
    for (const Slot s : open)
      if (!view.importing.count(s)) {
        // From the slot's owner as the target sees it now (its source, or the replica that took its place).
        std::string from = view.owner.count(s) ? view.owner.at(s) : "";
        for (const auto& src : sources_)
          if (from.empty() && std::find(src.slots.begin(), src.slots.end(), s) != src.slots.end())
            from = src.node.id;
        reimport.push_back({{"CLUSTER", "SETSLOT", std::to_string(s), "IMPORTING", from}});
      }
    if (!reimport.empty())
      if (const auto error = setslots(reimport)) {
        undo_complete_ = false;
        warnings_.push_back("not undone: " + *error + "; the copied keys of slots " +
                            format_slot_ranges(slot_ranges(open)) +
                            " are still on the target; run slotshift check");
        return;
      }
    // A node that has just seen a failover may answer CLUSTERDOWN (or TRYAGAIN, LOADING) for a moment: such
    // a round is tried again, for a while.
    const auto transient_until = Clock::now() + std::chrono::seconds(15);
    auto transient = [&](const std::string& error) {
      return (error.starts_with("CLUSTERDOWN") || error.starts_with("TRYAGAIN") ||
              error.starts_with("LOADING")) &&
             Clock::now() < transient_until;
    };
    for (const Slot s : open) {
      if (lost_owner) break;
      for (int rounds = 0; rounds < 100000 && delete_error.empty() && !lost_owner; ++rounds) {
        auto keys = target_control_.command({"CLUSTER", "GETKEYSINSLOT", std::to_string(s), "1000"});
        if (!keys || keys->is_error()) {
          delete_error = keys ? keys->str : target_control_.error();
          break;
        }
        if (keys->elements.empty()) break;
        std::vector<std::vector<std::string>> dels;
        for (const auto& k : keys->elements) {
          dels.push_back({"ASKING"});
          dels.push_back({"DEL", k.str});
        }
        const auto replies = target_control_.pipeline(dels);
        if (!replies) delete_error = target_control_.error();
        std::uint64_t done = 0;
        for (std::size_t i = 0; replies && i < replies->size() && delete_error.empty(); ++i) {
          if (!(*replies)[i].is_error()) {
            done += i % 2;  // the DELs, not the ASKINGs
          } else if ((*replies)[i].str.find("Hash slot not served") != std::string::npos) {
            lost_owner = true;
            break;
          } else if (transient((*replies)[i].str)) {
            std::this_thread::sleep_for(milliseconds(100));
            break;  // this round again
          } else {
            delete_error = join(dels[i]) + ": " + (*replies)[i].str;
          }
        }
        deleted += done;
      }
    }
    if (!lost_owner) break;
    delete_error = "the target kept losing the owner of the slots (their source failed over)";
    if (pass < 2) delete_error.clear();
  }
  std::optional<std::string> stable_error;
  if (delete_error.empty() && !open.empty()) {
    std::vector<std::vector<std::vector<std::string>>> stable;
    for (const Slot s : open)
      stable.push_back({{"CLUSTER", "SETSLOT", std::to_string(s), "STABLE"}});
    stable_error = setslots(stable);
    if (!stable_error)
      for (const Slot s : open)
        importing_[s] = false;
  }
  if (!delete_error.empty() || stable_error) undo_complete_ = false;
  journal(MoveStep::kRolledBack, {{"slots", format_slot_ranges(slot_ranges(open))},
                                  {"keys_deleted", deleted},
                                  {"complete", delete_error.empty() && !stable_error}});
  warnings_.push_back(
      "undone: " + std::to_string(stay.size()) + " slots not claimed (" +
      format_slot_ranges(slot_ranges(stay)) + ") stay with their owner; " + std::to_string(deleted) +
      " copied keys were deleted from the target" +
      (!delete_error.empty() ? ", but deleting the rest failed (" + delete_error +
                                   "): they are still there, in IMPORTING; run slotshift check"
       : stable_error ? ", but clearing IMPORTING failed (" + *stable_error + "): run slotshift check"
                      : ""));
}

// After a crash (of slotshift, of its machine) the journal says what the move planned and changed, and the
// nodes say where things are. Abort puts back what was not claimed, exactly as a move that fails does
// (rollback(): only in slots the target does not own by its own word), restores the settings the journal
// recorded, releases the proxies' holds and unpauses the sources, and removes claimed batches' keys from a
// 7.0 source's replicas. Resume does the same, then moves what is left of the plan as a new move recorded
// in the same journal: batches that were not claimed are copied again.
int MoveJob::recover(bool resume) {
  const char* verb = resume ? "resume" : "abort";
  std::string error;
  const std::string path = options_.journal.empty() ? latest_unfinished_journal(error) : options_.journal;
  if (path.empty()) {
    err_ << "slotshift " << verb << ": " << error << "\n";
    return kExitUsage;
  }
  const auto state = read_journal(path, error);
  if (!state) {
    err_ << "slotshift " << verb << ": " << error << "\n";
    return kExitUsage;
  }
  if (state->finished) {
    err_ << "slotshift " << verb << ": the move " << state->move_id << " of " << path << " has already "
         << (state->last_step == "done" ? "ended" : "been aborted") << "; nothing to do\n";
    return kExitDone;
  }
  move_id_ = state->move_id;
  journal_path_ = path;
  // Its own lease id: a second recovery that takes an expired one over closes this one's connections, not
  // its own.
  const std::string lease_id = move_id_ + "-" + verb + "-" + std::to_string(::getpid());
  options_.common.credentials.client_name = move_connection_name(lease_id);
  journal_fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (journal_fd_ < 0) {
    err_ << "slotshift " << verb << ": cannot append to " << path << ": " << std::strerror(errno) << "\n";
    return kExitUsage;
  }

  // The nodes, as the cluster knows them now (ids from the journal, addresses from the cluster).
  const auto seed = parse_host_port(options_.common.cluster, error);
  if (!seed) {
    err_ << "slotshift " << verb << ": --cluster: " << error << "\n";
    return kExitUsage;
  }
  const auto survey = survey_cluster(*seed, options_.common.timeout, options_.common.credentials);
  if (!survey.error.empty()) {
    err_ << "slotshift " << verb << ": " << survey.error << "\n";
    return kExitRefused;
  }
  topology_ = survey.merged;
  auto node_of = [&](const std::string& id, const std::string& address) {
    if (const Node* n = topology_.find(id)) return *n;
    Node n;
    n.id = id;
    if (const auto hp = parse_host_port(address, error)) {
      n.ip = hp->host;
      n.port = hp->port;
    }
    return n;
  };
  target_ = node_of(state->target_id, state->target_address);
  target_address_ = HostPort{target_.address(), target_.port};
  std::vector<Slot> planned;
  for (const auto& js : state->sources) {
    Source src;
    src.node = node_of(js.id, js.address);
    src.address = HostPort{src.node.address(), src.node.port};
    src.slots = js.slots;
    planned.insert(planned.end(), js.slots.begin(), js.slots.end());
    if (auto* c = control(src.node)) {
      if (auto r = c->command({"INFO", "server"}); r && !r->is_error()) {
        std::string why;
        parse_server_info(r->str, src.info, why);
      }
      // The setting a killed move may have left out of reach; the journal has what it was.
      if (const auto it = state->restore_min_replicas.find(js.id); it != state->restore_min_replicas.end()) {
        src.min_replicas_to_write = it->second.first;
        src.min_replicas_max_lag = it->second.second;
        src.can_refuse = true;
        auto now = c->command({"CONFIG", "GET", "min-replicas-to-write"});
        src.refusing =
            now && !now->is_error() && now->elements.size() == 2 && now->elements[1].str == kRefuseAllWrites;
      }
    }
    src.paused = true;  // CLIENT UNPAUSE: a killed move's pause may still be running
    sources_.push_back(std::move(src));
  }
  // A move that is still running holds its lease: recovering under it would fight it.
  lease_ = std::make_unique<MoveLease>(lease_id, options_.lease_ttl, options_.common.timeout,
                                       options_.common.credentials);
  std::vector<HostPort> leased{target_address_};
  for (const auto& src : sources_)
    leased.push_back(src.address);
  if (!lease_->acquire(leased)) {
    err_ << "slotshift " << verb << ": " << lease_->error() << "\n";
    return kExitRefused;
  }
  lease_->close_elsewhere(every_node(topology_));
  options_.common.credentials.lease_lost = lease_->fence();
  if (!state->proxies.empty()) {
    std::vector<HostPort> proxies;
    for (const auto& p : state->proxies)
      if (const auto hp = parse_host_port(p, error)) proxies.push_back(*hp);
    proxies_ = std::make_unique<ProxyControl>(proxies, options_.proxy_dns, options_.proxy_token,
                                              options_.common.timeout);
    owner_ = state->proxy_owner;
    proxies_->set_fence(lease_->fence());
  }
  // Candidates for undoing: every slot of the plan not claimed per the journal (a "claimed" record is written
  // once the source knows); rollback() asks the target which of them are its own all the same.
  for (const Slot s : planned)
    (state->claimed.count(s) ? claimed_ : importing_)[s] = true;
  journal(resume ? MoveStep::kResumeStarted : MoveStep::kAbortStarted,
          {{"by_pid", ::getpid()}, {"last_step", state->last_step}});
  if (state->engine == "native") settle_native(*state);
  rollback();
  clean_source_replicas();
  if (lease_lost()) {
    // As a move that lost its lease (run()): another slotshift has these nodes now, and this one's word on
    // what it undid may already be stale.
    stopped_without_lease();
    err_ << "slotshift " << verb << ": " << error_ << "\n";
    return kExitUnfinished;
  }
  std::vector<Slot> moved, left;
  for (const Slot s : planned)
    (claimed_[s] ? moved : left).push_back(s);
  journal(MoveStep::kAborted, {{"moved", format_slot_ranges(slot_ranges(moved))},
                               {"undone", format_slot_ranges(slot_ranges(left))},
                               {"complete", undo_complete_}});
  lease_->release();
  out_ << (resume ? "resuming" : "aborted") << " move " << move_id_ << " (journal " << path << ", last step "
       << state->last_step << (state->torn_lines ? ", a torn last record skipped" : "") << ")\n";
  if (!moved.empty())
    out_ << "  the target " << short_id(target_.id) << " owns " << moved.size() << " of its slots ("
         << format_slot_ranges(slot_ranges(moved)) << "): they stay moved\n";
  for (const auto& n : notes_)
    out_ << "note: " << n << "\n";
  for (const auto& w : warnings_)
    out_ << "warning: " << w << "\n";
  if (!undo_complete_) {
    err_ << "slotshift " << verb << ": not everything could be undone (see above); run it again\n";
    return kExitUnfinished;
  }
  if (!resume) {
    out_ << "  " << left.size() << " slots are with their sources again, as before the move\n";
    return kExitDone;
  }
  if (left.empty()) {
    out_ << "  nothing is left to move\n";
    return kExitDone;
  }
  MoveOptions rest = options_;
  std::vector<SlotRange> ranges = slot_ranges(left);
  rest.slots = format_slot_ranges(ranges);
  std::replace(rest.slots.begin(), rest.slots.end(), ' ', ',');
  rest.to = target_.id;
  rest.journal = path;
  rest.engine = state->engine;
  out_ << "  moving the " << left.size() << " slots left (" << format_slot_ranges(ranges) << ") to "
       << short_id(target_.id) << "\n";
  ::close(journal_fd_);  // the new move appends to the same file
  journal_fd_ = -1;
  MoveJob job(rest, out_, err_);
  return job.run();
}

}  // namespace slotshift
