#include "orchestrator/finding_guide.h"

namespace slotshift {

const FindingGuide& guide(FindingKind kind) {
  switch (kind) {
    case FindingKind::kSlotsUncovered: {
      static const FindingGuide g{
          "no master owns these slots",
          "CLUSTERDOWN for every key of them (or, with cluster-require-full-coverage no, for those keys "
          "only)",
          "with --assign-uncovered: gives each slot to a master that holds keys of it, else to the "
          "master with the fewest slots; without it, nothing"};
      return g;
    }
    case FindingKind::kSlotOwnedTwice: {
      static const FindingGuide g{
          "two masters claim the same slots; the one with the greater config epoch wins on each node "
          "that learns both",
          "writes to the losing node's copy are lost when it learns the winner; clients may bounce "
          "between them",
          "waits for the servers to settle it by config epoch, ending a collision between the two as "
          "they do; it never picks a claimant itself, since either may hold acknowledged writes"};
      return g;
    }
    case FindingKind::kSlotsOnReplica: {
      static const FindingGuide g{"a replica lists slots in some node's view: that view is stale",
                                  "MOVED towards a replica, which sends them back",
                                  "waits for the views to agree; nothing is changed"};
      return g;
    }
    case FindingKind::kEpochCollision: {
      static const FindingGuide g{
          "two masters share a config epoch, so a conflict over a slot between them has no winner",
          "nothing while they claim different slots; a move or failover between them can leave nodes "
          "disagreeing and clients in MOVED loops",
          "waits for the servers to end it; if it lasts, CLUSTER BUMPEPOCH on the master with the "
          "smaller id, as the servers themselves do"};
      return g;
    }
    case FindingKind::kSlotMigrating: {
      static const FindingGuide g{
          "the owner sends clients of keys it no longer holds to another node (ASK): a slot migration "
          "was left half done",
          "ASK redirections; multi-key commands over keys on both nodes fail with TRYAGAIN",
          "finishes the migration to that node (or to the master it has since become the replica of), "
          "the owner's keys replacing older copies there"};
      return g;
    }
    case FindingKind::kSlotImporting: {
      static const FindingGuide g{
          "the node accepts keys of a slot it does not own (after ASKING): a slot migration was left "
          "half done",
          "the keys already copied there are reached only through ASK from the owner; without it they "
          "are invisible",
          "finishes the migration when the owner migrates the slot there; else copies back to the owner "
          "each key it lacks, the owner's own copies staying"};
      return g;
    }
    case FindingKind::kMigratingAndImporting: {
      static const FindingGuide g{
          "one node migrates slots out and imports others at once, the state that most often ends with "
          "slots lost or owned twice",
          "as for the open slots themselves",
          "closes every open slot of the node, one at a time (see slot-migrating and slot-importing)"};
      return g;
    }
    case FindingKind::kImportingFromFailed: {
      static const FindingGuide g{
          "a node imports slots from a source that has failed: the migration cannot finish",
          "the keys copied before the failure are invisible: the new owner never sends clients there",
          "tells the importer the slot's owner, then closes the slot: finished when the new owner (the "
          "source's promoted replica) still migrates it there, else each key the owner lacks is copied "
          "back to it"};
      return g;
    }
    case FindingKind::kNodeFailed: {
      static const FindingGuide g{
          "a majority of masters agree that the node is down",
          "CLUSTERDOWN for its slots if it was a master with no replica promoted; nothing otherwise",
          "forgets it on every node when it owns no slot (its replica took over) and does not answer; a "
          "failed node that still owns slots is left: only it has their keys"};
      return g;
    }
    case FindingKind::kNodePFailed: {
      static const FindingGuide g{"a node cannot reach the flagged node, not yet agreed down",
                                  "timeouts for its slots if it really is down",
                                  "nothing: it clears by itself once the node answers"};
      return g;
    }
    case FindingKind::kNodeLoading: {
      static const FindingGuide g{"the node is loading its dataset or its first full sync",
                                  "LOADING from it for a short while", "nothing: wait"};
      return g;
    }
    case FindingKind::kEpochsUnknown:
    case FindingKind::kOpenSlotsUnknown: {
      static const FindingGuide g{"a node's own view could not be read, so this was not checked", "unknown",
                                  "nothing: make the node reachable and check again"};
      return g;
    }
    case FindingKind::kReplicasOfEmptyMaster: {
      static const FindingGuide g{
          "replicas follow a master that owns no slot: they protect nothing", "nothing",
          "nothing: move slots to the master, or make its replicas follow a master that owns slots "
          "(CLUSTER REPLICATE)"};
      return g;
    }
    case FindingKind::kOwnerDisagreement: {
      static const FindingGuide g{
          "nodes name different owners for the same slots",
          "MOVED loops between the nodes, or writes on a node that will lose them",
          "waits for gossip; an importer's view of the slot it imports is corrected when the slot is "
          "closed; otherwise fix never picks an owner"};
      return g;
    }
    case FindingKind::kEpochDisagreement:
    case FindingKind::kNodeSetDisagreement:
    case FindingKind::kRoleDisagreement: {
      static const FindingGuide g{
          "nodes have not all learned the same configuration yet",
          "redirections to stale owners, usually for under a second",
          "waits for the views to agree, and makes nodes that do not know each other meet (CLUSTER "
          "MEET)"};
      return g;
    }
    case FindingKind::kNodeUnreachable: {
      static const FindingGuide g{
          "a node of the cluster did not answer slotshift",
          "timeouts or errors for its slots if clients cannot reach it either",
          "nothing while it does not answer, unless the cluster agreed it failed and it owns no slot: "
          "then it is forgotten"};
      return g;
    }
    case FindingKind::kOrphanKeys: {
      static const FindingGuide g{
          "keys on a node in slots it neither owns nor imports (a replica: that its master does not "
          "own), left by a move or a failover",
          "nothing today; but if the slot moves back to that node they reappear as stale values, and a "
          "migration into it fails with BUSYKEY",
          "deletes them, never copying them to the owner, which holds the live values; a replica's "
          "through its master, whose deletes it replicates"};
      return g;
    }
    case FindingKind::kRefusingWrites: {
      static const FindingGuide g{
          "a master's min-replicas-to-write exceeds the replicas in sync with it",
          "NOREPLICAS for every write to its slots",
          "when slotshift left it (2147483647), puts back the value a move's journal recorded, else 0; "
          "any other value is the operator's: nothing"};
      return g;
    }
    case FindingKind::kMoveInProgress: {
      static const FindingGuide g{"a slotshift move is running (its lease is on the nodes)",
                                  "what the move promises: short pauses at each cutover",
                                  "nothing: fix refuses to run while a move holds its lease"};
      return g;
    }
    case FindingKind::kMoveUnfinished: {
      static const FindingGuide g{
          "a move of this cluster was killed: its journal neither ended nor was undone",
          "whatever it left: open slots, copied keys, settings, held proxies (each reported on its own "
          "too)",
          "slotshift abort through its journal: undoes what was not claimed; claimed slots stay moved"};
      return g;
    }
  }
  static const FindingGuide unknown{"unknown", "unknown", "nothing"};
  return unknown;
}

}  // namespace slotshift
