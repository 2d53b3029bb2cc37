#include "orchestrator/move_job.h"

#include <algorithm>
#include <thread>

#include "common/topology.h"
#include "orchestrator/journal.h"

namespace slotshift {

using std::chrono::milliseconds;

// A target's own CLUSTER NODES, asked on a new connection (the one that failed may be the reason we ask),
// again and again until a deadline.
TargetView MoveJob::target_view(const std::vector<Slot>& slots) {
  TargetView v;
  const auto deadline = Clock::now() + std::max(milliseconds(10000), options_.common.timeout * 3);
  for (;;) {
    NodeClient c;
    if (c.connect(target_address_, options_.common.timeout, options_.common.credentials)) {
      const auto nodes = c.command_when_loaded({"CLUSTER", "NODES"}, deadline);
      const auto parsed = nodes && !nodes->is_error() ? parse_cluster_nodes(*nodes) : TopologyResult{};
      const Node* me = parsed.ok() ? parsed.topology.myself() : nullptr;
      if (me && me->id == target_.id) {
        for (const Slot s : slots) {
          const Node* o = parsed.topology.owner(s);
          if (o && o->id == target_.id) {
            v.owned.push_back(s);
          } else {
            v.other.push_back(s);
            if (me->importing.count(s)) v.importing.insert(s);
            if (o)
              v.owner[s] = o->id;
            else
              v.unbound.insert(s);
          }
        }
        v.known = true;
        return v;
      }
      v.error = !nodes ? c.error() : nodes->is_error() ? nodes->str : "its CLUSTER NODES names no myself";
    } else {
      v.error = c.error();
    }
    if (Clock::now() > deadline) return v;
    std::this_thread::sleep_for(milliseconds(100));
  }
}

// A target that failed over during the move is a replica now; its data (the copied keys included) lives on
// in the replica that took its place, which is where they must be removed. Nothing to do when the target is
// still a master or cannot be asked.
void MoveJob::follow_target_failover() {
  NodeClient c;
  if (!c.connect(target_address_, options_.common.timeout, options_.common.credentials)) return;
  const auto nodes = c.command({"CLUSTER", "NODES"});
  const auto view = nodes && !nodes->is_error() ? parse_cluster_nodes(*nodes) : TopologyResult{};
  const Node* me = view.ok() ? view.topology.myself() : nullptr;
  if (!me || me->is_master() || me->master_id.empty()) return;
  const Node* master = view.topology.find(me->master_id);
  if (!master || master->port == 0) return;
  warnings_.push_back("the target " + target_address_.str() + " failed over during the move to " +
                      master->address() + ":" + std::to_string(master->port) + ", which took its place");
  journal(MoveStep::kTargetFailedOver,
          {{"from", target_.id},
           {"to", master->id},
           {"to_address", master->address() + ":" + std::to_string(master->port)}});
  target_ = *master;
  target_address_ = HostPort{master->address(), master->port};
  target_control_ = NodeClient{};
  target_fanout_connected_ = false;
}

// A claim that failed part way: some of the batch's SETSLOT ... NODE may have run, and the target owns those
// slots whatever their replies said; the cluster learns it by gossip, and the source then deletes its keys of
// them. So nothing is decided from the error: the target is asked what it owns. Those slots are moved, and
// the source stays fenced until it knows; the others go back to the source (rollback() removes their copies,
// and only theirs). If the target cannot even be asked, nothing is undone and the source refuses writes.
bool MoveJob::settle_claim(Source& src, Batch& batch, const std::string& claim_error, bool held) {
  const std::string slots_text = format_slot_ranges(slot_ranges(batch.slots));
  journal(MoveStep::kClaimFailed, {{"slots", slots_text}, {"error", claim_error}});
  // Read twice, half a second apart, until both agree: a SETSLOT still on its way through the target (one
  // whose connection timed out on our side) must not change the answer after it was given.
  auto view = target_view(batch.slots);
  for (const auto until = Clock::now() + std::chrono::seconds(10); view.known && Clock::now() < until;) {
    std::this_thread::sleep_for(milliseconds(500));
    auto again = target_view(batch.slots);
    const bool same = again.known && again.owned == view.owned;
    view = std::move(again);
    if (same) break;
  }
  if (!view.known) {
    for (const Slot s : batch.slots)
      importing_[s] = false;  // rollback() must not touch them: they may be the target's
    const bool refused = src.refusing || refuse_writes(src);
    if (refused) src.keep_refusing = true;
    unpause(src);
    if (held) release_proxies(slots_text);
    journal(MoveStep::kClaimUnknown, {{"slots", slots_text}, {"error", view.error}});
    return fail(
        "claiming batch " + slots_text + " on the target: " + claim_error +
        "; then the target could not be asked which of its slots it owns (" + view.error +
        "). Nothing of the batch was undone, since any of its slots may be the target's now, and " +
        (refused ? "the source " + src.address.str() +
                       " refuses writes so that none is lost: once slotshift check shows one owner for each "
                       "slot, send it `CONFIG SET min-replicas-to-write " +
                       src.min_replicas_to_write + " min-replicas-max-lag " + src.min_replicas_max_lag + "`"
                 : "the source could not be fenced either: run slotshift check"));
  }
  for (const Slot s : view.owned) {
    claimed_[s] = true;
    importing_[s] = false;
  }
  const std::string owned_text = format_slot_ranges(slot_ranges(view.owned));
  const std::string other_text = format_slot_ranges(slot_ranges(view.other));
  journal(MoveStep::kClaimSettled,
          {{"slots", slots_text}, {"target_owns", owned_text}, {"source_keeps", other_text}});
  if (held) {
    if (!view.owned.empty()) route_and_release(owned_text);
    if (!view.other.empty()) release_proxies(other_text);
  }
  const bool learnt = view.owned.empty() || wait_source_learns(src, view.owned);
  unpause(src);
  std::string what = "claiming batch " + slots_text + " on the target failed part way (" + claim_error +
                     "). The nodes say: ";
  if (view.owned.empty())
    what += "the target owns none of its slots";
  else
    what += "the target owns " + std::to_string(view.owned.size()) + " of its " +
            std::to_string(batch.slots.size()) + " slots (" + owned_text + "), which are moved" +
            (learnt ? " and the source knows it" : "; the source had not learnt it: " + fence_left(src));
  if (!view.other.empty())
    what += "; the other " + std::to_string(view.other.size()) + " (" + other_text +
            ") stay with the source " + src.address.str();
  return fail(what);
}

}  // namespace slotshift
