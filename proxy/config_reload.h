// What a SIGHUP changes: the settings built again from their sources (the config file, the command line, the
// environment, the secret files) compared with those in force. Most take effect at once (limits, timeouts,
// seeds, passwords, the admin token, TLS files); the few that shape the process itself (where it listens, its
// threads, who may log in and how) need a restart, and keep their old value until then.
#pragma once

#include <string>
#include <vector>

#include "proxy/config.h"

namespace slotshift::proxy {

struct ReloadPlan {
  Config next;  // what takes effect: the new settings, with the restart-only ones as they were
  std::vector<std::string> changed;  // names of the settings that changed and take effect
  std::vector<std::string> restart;  // names of those that changed but need a restart
  bool login_changed = false;  // masteruser or masterauth: new node connections log in with the new ones
  // Why the settings that would take effect do not go together (the checks of start-up, on `next`), or "":
  // then nothing changes.
  std::string error;
};

ReloadPlan plan_reload(const Config& current, const Config& wanted);

// One line for the log: "changed: a, b; needs a restart (kept as it was): c" or "no setting changed".
std::string describe(const ReloadPlan& plan);

}  // namespace slotshift::proxy
