#include "orchestrator/fault_injection.h"

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

}  // namespace slotshift::fault
