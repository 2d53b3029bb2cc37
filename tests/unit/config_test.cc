// The proxy's settings as a user writes them in the JSON file (proxy/config.h): read into the same fields as
// the flags, and held to the same bounds, so that a file cannot start a proxy the command line would refuse.
#include "proxy/config.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

using namespace slotshift;
using namespace slotshift::proxy;

namespace {

// `text` as a file of its own; removed when the test case ends.
struct ConfigFile {
  std::string path;
  explicit ConfigFile(const std::string& text) {
    char name[] = "/tmp/slotshift-config-test-XXXXXX";
    const int fd = mkstemp(name);
    REQUIRE(fd >= 0);
    close(fd);
    path = name;
    std::ofstream(path) << text;
  }
  ~ConfigFile() { std::remove(path.c_str()); }
};

// The error of loading `text` and checking the bounds, "" when the settings may be used.
std::string load(const std::string& text, Config& config) {
  ConfigFile file(text);
  const std::string error = load_config_file(file.path, config);
  return error.empty() ? range_error(config) : error;
}

}  // namespace

TEST_CASE("numbers in the file are read into the settings the flags set") {
  Config config;
  CHECK(load(R"({"threads": 3, "refresh-interval-ms": 250, "max-pipeline": 2, "drain-timeout-ms": 0})",
             config) == "");
  CHECK(config.threads == 3);
  CHECK(config.refresh_interval.count() == 250);
  CHECK(config.max_pipeline == 2);
  CHECK(config.drain_timeout.count() == 0);
}

TEST_CASE("a number out of its setting's range is refused, naming the setting and its bounds") {
  Config config;
  CHECK(load(R"({"refresh-interval-ms": 0})", config) ==
        "--refresh-interval-ms must be between 100 and 3600000");
  config = Config{};
  CHECK(load(R"({"threads": 0})", config) == "--threads must be between 1 and 256");
  config = Config{};
  CHECK(load(R"({"request-timeout-ms": -5})", config) ==
        "--request-timeout-ms must be between 1 and 3600000");
  config = Config{};
  CHECK(load(R"({"max-pipeline": 1})", config) == "--max-pipeline must be at least 2");
  config = Config{};
  CHECK(load(R"({"max-inflight-bytes": 0})", config) == "--max-inflight-bytes must be at least 1");
  config = Config{};
  CHECK(load(R"({"idle-timeout-s": -1})", config) == "--idle-timeout-s must be between 0 and 31536000");
}

TEST_CASE("the defaults are within every bound") {
  CHECK(range_error(Config{}) == "");
}
