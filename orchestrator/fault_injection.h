// Faults that the fault-injection tests ask a move to suffer at a named point, so that each failure the
// move must survive can be produced on real servers at the same instant every run:
//
//   SLOTSHIFT_FAULT=<point>:<action>
//
//   <step>:kill                         SIGKILL this process right after the journal record <step> is on disk
//                                       (its intent recorded, nothing of it acted on)
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

}  // namespace slotshift::fault
