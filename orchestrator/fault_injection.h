// Faults that the fault-injection tests ask a move to suffer at a named point, so that each failure the
// move must survive can be produced on real servers at the same instant every run:
//
//   SLOTSHIFT_FAULT=<point>:<action>
//
//   <step>:kill                         SIGKILL this process right after the journal record <step> is on disk
//                                       (its intent recorded, nothing of it acted on)
//   <step>:run                          right after the journal record <step> is on disk, runs the shell
//   command
//                                       in SLOTSHIFT_FAULT_RUN and waits for it (it may start something in
//                                       the background: stop a node for a while, fail one over)
//   claim:drop-setslot-connections      just before a batch's claim, half of the target's SETSLOT connections
//                                       are closed from the server side (CLIENT KILL ID), as a restarted load
//                                       balancer would: some of the batch's SETSLOTs run, the others never do
//
// Unset (as for every user), nothing here does anything.
#pragma once

#include <string_view>

namespace slotshift::fault {

// True when SLOTSHIFT_FAULT names this point and action.
bool armed(std::string_view point, std::string_view action);

// The fault of a journal record: kill or run (see above), if SLOTSHIFT_FAULT names the step.
void at_step(std::string_view step);

}  // namespace slotshift::fault
