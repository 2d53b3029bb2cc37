#include "orchestrator/fault_injection.h"

#include <csignal>
#include <cstdlib>
#include <string>

namespace slotshift::fault {

bool armed(std::string_view point, std::string_view action) {
  static const std::string wanted = [] {
    const char* v = std::getenv("SLOTSHIFT_FAULT");
    return std::string(v ? v : "");
  }();
  return !wanted.empty() && wanted == std::string(point) + ":" + std::string(action);
}

void at_step(std::string_view step) {
  if (armed(step, "kill")) ::raise(SIGKILL);
  if (armed(step, "run"))
    if (const char* command = std::getenv("SLOTSHIFT_FAULT_RUN")) {
      // The command's own exit status is the test's business.
      [[maybe_unused]] const int status = std::system(command);
    }
}

}  // namespace slotshift::fault
