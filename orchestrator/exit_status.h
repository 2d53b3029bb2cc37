// The exit status of every slotshift command: what a script, or a Kubernetes Job's podFailurePolicy, acts on
// without reading the output. The README's "Exit status" lists the same; deploy/k8s/overlays/job uses it.
//
//   0  done         the command did what it was asked: a move ended with every node naming the new owner;
//                   check found nothing wrong; fix left nothing wrong; abort or resume finished
//   1  failed       check: something is wrong (or a node could not be asked). fix: something is left wrong.
//                   move, resume: it stopped part way and undid everything it had not claimed; claimed
//                   batches stay moved, the journal is closed, and the same move run again moves the rest
//   2  usage        the command line, or a file it names, is wrong; nothing was touched. Running it again
//                   as it is fails the same way
//   3  not applied  fix: the plan was printed and not applied (no --yes, or the answer was no)
//   4  refused      move, resume, abort, fix: nothing was touched, because of the cluster as it is now (a
//                   node that does not answer, a state a move cannot start from, another move's lease). Run
//                   it again once that has changed
//   5  unfinished   move, resume, abort: it stopped with work of the move left on the nodes (an undo that
//                   could not finish, a source still fencing writes, a lease it no longer holds); its journal
//                   stays open. Run slotshift abort or resume with that journal (check shows what is left)
#pragma once

namespace slotshift {

enum ExitStatus : int {
  kExitDone = 0,
  kExitFailed = 1,
  kExitUsage = 2,
  kExitNotApplied = 3,
  kExitRefused = 4,
  kExitUnfinished = 5,
};

// The name the --json reports give a status ("outcome"), as the list above names it.
constexpr const char* exit_status_name(int status) {
  switch (status) {
    case kExitDone:
      return "done";
    case kExitFailed:
      return "failed";
    case kExitUsage:
      return "usage";
    case kExitNotApplied:
      return "not applied";
    case kExitRefused:
      return "refused";
    case kExitUnfinished:
      return "unfinished";
  }
  return "unknown";
}

}  // namespace slotshift
