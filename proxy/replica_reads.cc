#include "proxy/replica_reads.h"

#include "common/resp.h"
#include "proxy/backend.h"
#include "proxy/errors.h"
#include "proxy/worker.h"

namespace slotshift::proxy {

bool ReplicaReads::eligible(const Request& r) const {
  if (mode_ == Config::ReadFrom::kMaster) return false;
  // Request::idempotent is the command table's readonly-and-not-write: GET, MGET's parts, EVAL_RO, FCALL_RO,
  // SORT_RO; not EVAL or FCALL (a script may write), not WAIT or anything with side effects.
  if (!r.idempotent || !r.has_slot || r.fixed || r.blocking || r.master_only) return false;
  // A transaction's block, WATCH and a watched EXEC run on the client's own node connection, by its master.
  if (r.replies_per_send != 1 || r.watch != Request::Watch::kNone) return false;
  // XREAD and XREADGROUP are readonly-flagged and may block; Pub/Sub commands are no reads of keys.
  if (!r.cmd || r.cmd->has_flag(CommandFlag::kBlocking) || r.cmd->has_flag(CommandFlag::kPubsub))
    return false;
  return true;
}

Backend* ReplicaReads::pick(const Request& r, Backend* master, std::string& wait) {
  const std::uint64_t now = worker_.now_ms();
  // Just after the slot changed owner, the new owner's replicas may not have its keys yet (they replicate
  // what the move wrote on their master a little later), and the old owner's replicas answer MOVED: for a
  // moment the slot's reads go to the master, in every mode, as they would without --read-from.
  if (changed_ms_[r.slot] != 0 && now - changed_ms_[r.slot] < kSlotSettleMs) return nullptr;
  Backend* best = nullptr;
  if (auto it = shards_.find(master); it != shards_.end() && !it->second.replicas.empty()) {
    Shard& shard = it->second;
    const std::size_t n = shard.replicas.size();
    // The replica with the fewest requests waiting at it (of this worker's), the first of equals in a round
    // that moves on at every read: equal replicas share the reads, a slow one gets fewer.
    for (std::size_t i = 0; i < n; ++i) {
      Backend* candidate = shard.replicas[(shard.next + i) % n];
      if (const auto synced = synced_.find(candidate); synced == synced_.end() || !synced->second) continue;
      // With ACL pass-through a read runs as its client's user, on that user's connection to the replica; a
      // RESP3 client's on one that speaks RESP3.
      if (r.login || r.proto != 2)
        candidate = worker_.replica_backend(candidate->address(), r.login, r.proto);
      // A connection that failed is left alone for a while; each user's on its own (a replica may refuse one
      // user's login or READONLY and not another's).
      if (!down_ms_.empty()) {
        const auto down = down_ms_.find(candidate);
        if (down != down_ms_.end()) {
          if (now - down->second < kReplicaCooldownMs) continue;
          down_ms_.erase(down);
        }
      }
      if (!best || candidate->inflight() < best->inflight()) best = candidate;
    }
    ++shard.next;
  }
  if (!best && mode_ == Config::ReadFrom::kPreferReplica) worker_.stats().replica_fallbacks.add();
  if (!best && mode_ == Config::ReadFrom::kReplica)
    wait = "no replica of " + master->name() + " is usable for hash slot " + std::to_string(r.slot) +
           " (--read-from replica reads on replicas only)";
  return best;
}

bool ReplicaReads::refused(const RequestPtr& r, std::string_view err) {
  if (err.starts_with("-MOVED ") || err.starts_with("-ASK ")) {
    // The replica's master does not serve the slot any more, in the replica's view of the cluster, which may
    // be ahead of the proxy's slot map or behind it (a replica of the slot's new owner that has not heard of
    // the move points back at the old one). Neither is trusted: the read goes on at the slot map's master,
    // which serves it or redirects it as any command, and the map is reloaded. The slot's reads stay on
    // masters until it settles.
    (err[1] == 'M' ? worker_.stats().moved : worker_.stats().ask).add();
    if (++r->redirects > worker_.config().max_redirects) {
      worker_.complete(r, errors::too_many_redirects(err.substr(1, err.size() - 3)));
      return true;
    }
    r->master_only = true;
    if (r->has_slot) owner_changed(r->slot);
    worker_.router().refresh_soon();
    ++r->attempt;
    worker_.stats().retries.add();
    worker_.dispatch(r);
    return true;
  }
  if (err.starts_with("-LOADING") || err.starts_with("-MASTERDOWN")) {
    // The replica is loading its master's data, or lost its master and is set not to serve stale data: it
    // ran nothing. The read is sent again (elsewhere), and this replica is left alone for a while.
    if (r->replica) failed(r->replica);
    ++r->attempt;
    worker_.stats().retries.add();
    worker_.dispatch(r);
    return true;
  }
  return false;
}

void ReplicaReads::topology_loaded(const Topology& t, const std::vector<Backend*>& masters) {
  if (!enabled()) return;
  shards_.clear();
  for (std::size_t i = 0; i < t.nodes.size() && i < masters.size(); ++i) {
    if (!masters[i]) continue;
    Shard& shard = shards_[masters[i]];
    // A master that has replicated nothing yet (a fresh cluster, no write so far) has offset 0 too.
    const bool master_at_zero = t.nodes[i].replication_offset.value_or(1) == 0;
    for (const Node* replica : t.replicas_of(t.nodes[i].id)) {
      // CLUSTER SHARDS (and CLUSTER SLOTS, by leaving them out) says which replicas are flagged failing.
      if (replica->failed() || replica->pfailed() || replica->port == 0 || replica->address().empty())
        continue;
      Backend* b = worker_.replica_backend(HostPort{replica->address(), replica->port}, nullptr, 2);
      shard.replicas.push_back(b);
      // Whether it is in sync the replica says itself (ROLE: "connected" to its master). CLUSTER SHARDS's
      // "loading" (replication offset 0) cannot tell: a node knows the others' offsets from the cluster
      // bus, and shows a replica in sync as loading until a message brings its offset. It is the fallback
      // for a proxy user that may not ask ROLE. A replica that does not say connected (it is still syncing,
      // or has lost its master) would serve an empty or old data set: it is not read from until it does.
      const bool loading =
          replica->health == Health::kLoading || replica->replication_offset.value_or(1) == 0;
      const bool fallback = !loading || master_at_zero;
      std::string wire;
      resp::append_command(wire, {"ROLE"});
      b->send_internal(std::move(wire), [this, b, fallback](const std::string* reply) {
        if (!reply) {
          synced_[b] = false;
          return;
        }
        const resp::Value role = resp::decode(*reply);
        if (role.is_error()) {
          synced_[b] = fallback;
          return;
        }
        synced_[b] = role.elements.size() >= 4 && role.elements[0].str == "slave" &&
                     role.elements[3].str == "connected";
      });
    }
  }
}

void ReplicaReads::owner_changed(Slot slot) {
  if (enabled()) changed_ms_[slot] = worker_.now_ms();
}

void ReplicaReads::failed(const Backend* replica) {
  down_ms_[replica] = worker_.now_ms();
}

}  // namespace slotshift::proxy
