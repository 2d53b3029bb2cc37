// A byte queue between one producer that must never wait (the replica link's receiver, which reads the source
// at the speed the source sends) and one consumer that may be slower (the copier, which goes at the speed of
// the target). Up to `memory_limit` bytes wait in memory; beyond that, bytes go to a file in `spill_dir`
// until the consumer has caught up with the file. So the source never sees a slow reader and never drops the
// link for an output buffer over its limit, and the orchestrator's memory stays bounded.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>

namespace slotshift {

class Spool {
 public:
  Spool(std::size_t memory_limit, std::string spill_dir);
  ~Spool();
  Spool(const Spool&) = delete;
  Spool& operator=(const Spool&) = delete;

  // Producer. Never blocks on the consumer; false (see error()) only when the spill file cannot be written.
  bool push(std::string_view bytes);
  // Producer: no more bytes will come. `error` (empty for a clean end) is what the consumer sees after the
  // last byte.
  void close(std::string error = {});

  // Consumer: copies 1..n bytes into dst. Returns 0 when the spool is closed and drained (closed_error() says
  // why), or -1 when nothing arrived before `deadline`.
  long read(char* dst, std::size_t n, std::chrono::steady_clock::time_point deadline);
  std::string closed_error() const;

  // Bytes pushed and not yet read, and how many of them are on disk.
  std::uint64_t backlog() const;
  std::uint64_t spilled() const;
  std::uint64_t total_pushed() const;
  std::uint64_t peak_spilled() const;
  const std::string& error() const { return error_; }

 private:
  bool spill(std::string_view bytes);  // under mu_

  mutable std::mutex mu_;
  std::condition_variable ready_;
  std::size_t memory_limit_;
  std::string spill_dir_;
  std::deque<std::string> chunks_;  // in memory, in order, before any spilled bytes
  std::size_t front_offset_ = 0;    // bytes of chunks_.front() already read
  std::uint64_t memory_bytes_ = 0;
  int file_ = -1;                 // spill file (unlinked at creation)
  std::uint64_t file_write_ = 0;  // bytes written to the file
  std::uint64_t file_read_ = 0;   // bytes of the file already read
  std::uint64_t pushed_ = 0;
  std::uint64_t peak_spilled_ = 0;
  bool closed_ = false;
  std::string closed_error_;
  std::string error_;
};

}  // namespace slotshift
