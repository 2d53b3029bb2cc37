// Time as text, for the lines both programs log.
#pragma once

#include <string>

namespace slotshift {

// Now, in UTC with milliseconds, as RFC 3339 writes it: 2026-12-03T12:11:11.123Z.
std::string now_rfc3339();

}  // namespace slotshift
