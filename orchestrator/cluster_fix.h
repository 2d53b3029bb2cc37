// slotshift fix: repairs what `slotshift check` finds, without losing an acknowledged write.
//
// It plans from one check, prints the plan, asks (or takes --yes), applies the steps in order and checks
// again. Every step looks at the nodes again before it acts (slot_repair.h), so a step made unnecessary by an
// earlier one (an open slot the undone move had left) does nothing, and a fix killed half way is simply run
// again. Order: the unfinished moves first (their own undo knows what they changed), then the writes a move
// left refused, then who owns what (epoch collisions, owners the nodes disagree on), then the open slots, the
// orphans, and the uncovered slots when asked to.
//
// Nothing is changed while any node does not answer or a move holds its lease.
#pragma once

#include <istream>
#include <ostream>
#include <string>

#include "orchestrator/commands.h"

namespace slotshift {

struct FixOptions {
  CommonOptions common;
  bool yes = false;                              // apply without asking
  bool dry_run = false;                          // print the plan only
  bool assign_uncovered = false;                 // give uncovered slots an owner
  bool interactive = false;                      // stdin is a terminal: ask
  std::string proxy_token;                       // for an unfinished move's proxies
  std::chrono::milliseconds step_budget{60000};  // the longest one repair may take
};

// Exit codes: 0 the cluster is clean afterwards (or was), 1 findings remain or fix refused, 2 usage, 3 the
// plan was shown and not applied (no --yes, and no terminal to ask on, or the answer was no).
int run_fix(const FixOptions& options, std::istream& in, std::ostream& out, std::ostream& err);

}  // namespace slotshift
