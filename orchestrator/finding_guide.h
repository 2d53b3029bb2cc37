// What each finding of `slotshift check` means, what clients see because of it, and what `slotshift fix` does
// about it: written once, here, for the human report, the JSON report and fix's plan alike.
#pragma once

#include <string_view>

#include "common/topology.h"

namespace slotshift {

struct FindingGuide {
  std::string_view meaning;
  std::string_view clients_see;
  std::string_view fix;
};

const FindingGuide& guide(FindingKind kind);

}  // namespace slotshift
