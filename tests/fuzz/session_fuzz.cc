// libFuzzer target for the proxy's client session: each input is run through SessionHarness (its layout and
// its checks are in session_harness.h) against an embedded proxy in front of the scripted cluster. A failed
// check aborts, so libFuzzer keeps the input as a crash like any sanitizer report.
//
// Build and run: see README.md here. The standalone driver (session_fuzz_main.cc) runs the same inputs.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "tests/fuzz/session_harness.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // One scripted cluster and one reserved port for the whole run; each input gets a fresh proxy.
  static auto* harness = new slotshift::fuzz::SessionHarness();
  const std::string failure = harness->run(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!failure.empty()) {
    std::fprintf(stderr, "session_fuzz: %s\n", failure.c_str());
    std::abort();
  }
  return 0;
}
