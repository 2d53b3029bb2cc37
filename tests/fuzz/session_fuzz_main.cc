// session_fuzz: the session fuzzer's standalone driver, for any compiler and for ctest. It runs the seed
// corpus, then inputs from InputGenerator for a bounded time, each through SessionHarness (see
// session_harness.h).
//
//   session_fuzz [--seconds N] [--seed N] [--corpus DIR] [--failure FILE] [--max-len BYTES]
//   session_fuzz --replay FILE...        run these inputs once each
//   session_fuzz --emit DIR --count N    write N generated inputs to DIR (seeds for the libFuzzer target)
//
// The seed is printed first; the same seed makes the same inputs. Before an input runs it is kept where a
// failure handler can reach it: a failed check, an abort (libstdc++'s assertions), a crash signal, a
// sanitizer report or an input that hangs all write it to the failure file (session_fuzz-failure-<seed>.bin
// unless given) before the process dies, and the message says how to replay it.
#include <execinfo.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "tests/fuzz/session_harness.h"
#include "tests/fuzz/session_inputs.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLOTSHIFT_FUZZ_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define SLOTSHIFT_FUZZ_ASAN 1
#endif
#ifdef SLOTSHIFT_FUZZ_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

using namespace slotshift;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kInputHangs = std::chrono::seconds(60);

// The input being run, for the failure handlers. Written by the main thread only between inputs; the handlers
// read it when the process is dying.
std::string g_input;
char g_failure_path[4096] = "session_fuzz-failure.bin";
std::atomic<std::int64_t> g_input_started_ms{0};  // 0 between inputs
std::atomic<bool> g_check_failed{false};          // the abort is ours: its stack says nothing

void write_stderr(const char* s) {
  [[maybe_unused]] const auto n = ::write(2, s, std::strlen(s));
}

// Async-signal-safe: open, write and close only.
void save_input() {
  const int fd = ::open(g_failure_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    write_stderr("session_fuzz: cannot write the failing input\n");
    return;
  }
  std::size_t done = 0;
  while (done < g_input.size()) {
    const ssize_t n = ::write(fd, g_input.data() + done, g_input.size() - done);
    if (n <= 0) break;
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
  write_stderr("session_fuzz: the failing input is in ");
  write_stderr(g_failure_path);
  write_stderr("; replay it with: session_fuzz --replay ");
  write_stderr(g_failure_path);
  write_stderr("\n");
}

// The stack of the thread that failed (an assertion aborts in the proxy's worker thread), then the input.
void on_signal(int sig) {
  if (!g_check_failed) {
#ifdef SLOTSHIFT_FUZZ_ASAN
    __sanitizer_print_stack_trace();
#else
    void* frames[64];
    ::backtrace_symbols_fd(frames, ::backtrace(frames, 64), 2);
    write_stderr("session_fuzz: (addr2line -Cfpe <binary> <+offsets> names them, or replay under gdb)\n");
#endif
  }
  save_input();
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

#ifdef SLOTSHIFT_FUZZ_ASAN
void on_death() {
  save_input();
}
#endif

void install_failure_handlers() {
#ifdef SLOTSHIFT_FUZZ_ASAN
  // AddressSanitizer handles SIGSEGV and friends itself and calls this before the process exits.
  __sanitizer_set_death_callback(&on_death);
#else
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL})
    std::signal(sig, &on_signal);
#endif
  std::signal(SIGABRT, &on_signal);  // libstdc++'s assertions, and a failed check below
}

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch()).count();
}

// An input that runs for over a minute is a hang (every wait in the harness is far shorter): report it like
// a crash.
void start_watchdog() {
  std::thread([] {
    for (;;) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
      const std::int64_t started = g_input_started_ms.load();
      if (started != 0 && now_ms() - started > std::chrono::milliseconds(kInputHangs).count()) {
        write_stderr("session_fuzz: an input has run for over a minute: a hang\n");
        std::abort();
      }
    }
  }).detach();
}

void run_or_die(fuzz::SessionHarness& harness, const std::string& input, const std::string& what) {
  g_input = input;
  g_input_started_ms = now_ms();
  const std::string failure = harness.run(input);
  g_input_started_ms = 0;
  if (!failure.empty()) {
    std::fprintf(stderr, "session_fuzz: %s: %s\n", what.c_str(), failure.c_str());
    g_check_failed = true;
    std::abort();  // the SIGABRT handler saves the input
  }
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int usage() {
  std::fprintf(
      stderr,
      "usage: session_fuzz [--seconds N] [--seed N] [--corpus DIR] [--failure FILE] [--max-len BYTES]\n"
      "       session_fuzz --replay FILE...\n"
      "       session_fuzz --emit DIR --count N [--seed N]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 20;
  std::uint64_t seed = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                                      std::chrono::system_clock::now().time_since_epoch())
                                                      .count());
  std::string corpus, failure_path, emit;
  std::size_t max_len = 64 * 1024, count = 0;
  std::vector<std::string> replay;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--seconds" && has_value) {
      seconds = std::atof(argv[++i]);
    } else if (a == "--seed" && has_value) {
      seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--corpus" && has_value) {
      corpus = argv[++i];
    } else if (a == "--failure" && has_value) {
      failure_path = argv[++i];
    } else if (a == "--max-len" && has_value) {
      max_len = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--emit" && has_value) {
      emit = argv[++i];
    } else if (a == "--count" && has_value) {
      count = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--replay") {
      while (i + 1 < argc)
        replay.push_back(argv[++i]);
      if (replay.empty()) return usage();
    } else {
      return usage();
    }
  }

  if (!emit.empty()) {
    fuzz::InputGenerator generator(seed, max_len);
    std::filesystem::create_directories(emit);
    for (std::size_t i = 0; i < count; ++i) {
      const std::string input = generator.next();
      generator.remember(input);
      std::ofstream(std::filesystem::path(emit) / ("gen-" + std::to_string(seed) + "-" + std::to_string(i)),
                    std::ios::binary)
          << input;
    }
    return 0;
  }

  if (failure_path.empty()) failure_path = "session_fuzz-failure-" + std::to_string(seed) + ".bin";
  if (!replay.empty()) failure_path = "session_fuzz-replay-failure.bin";
  std::snprintf(g_failure_path, sizeof g_failure_path, "%s", failure_path.c_str());
  install_failure_handlers();
  start_watchdog();
  fuzz::SessionHarness harness;

  if (!replay.empty()) {
    for (const auto& file : replay) {
      const auto started = Clock::now();
      run_or_die(harness, read_file(file), file);
      std::fprintf(stderr, "session_fuzz: %s: passed in %.0f ms\n", file.c_str(),
                   std::chrono::duration<double, std::milli>(Clock::now() - started).count());
    }
    return 0;
  }

  std::fprintf(stderr,
               "session_fuzz: seed %llu (the same inputs again: --seed %llu), for %.0f s; a failing input is "
               "written to %s\n",
               static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed), seconds,
               failure_path.c_str());
  const auto started = Clock::now();
  const auto until = started + std::chrono::duration<double>(seconds);
  fuzz::InputGenerator generator(seed, max_len);
  std::size_t runs = 0;

  if (!corpus.empty()) {
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(corpus)) {
      if (entry.is_regular_file()) files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& file : files) {
      std::string input = read_file(file);
      run_or_die(harness, input, "seed " + file.string());
      generator.remember(std::move(input));
      ++runs;
    }
    std::fprintf(stderr, "session_fuzz: %zu seed inputs passed\n", files.size());
  }

  auto report_at = started + std::chrono::seconds(10);
  while (Clock::now() < until) {
    std::string input = generator.next();
    run_or_die(harness, input, "input " + std::to_string(runs));
    generator.remember(std::move(input));
    ++runs;
    if (Clock::now() >= report_at) {
      report_at += std::chrono::seconds(10);
      const double elapsed = std::chrono::duration<double>(Clock::now() - started).count();
      std::fprintf(stderr, "session_fuzz: %zu inputs in %.0f s\n", runs, elapsed);
    }
  }
  std::fprintf(stderr, "session_fuzz: %zu inputs passed in %.1f s (seed %llu)\n", runs,
               std::chrono::duration<double>(Clock::now() - started).count(),
               static_cast<unsigned long long>(seed));
  return 0;
}
