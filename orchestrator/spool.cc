#include "orchestrator/spool.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace slotshift {

Spool::Spool(std::size_t memory_limit, std::string spill_dir)
    : memory_limit_(memory_limit), spill_dir_(std::move(spill_dir)) {}

Spool::~Spool() {
  if (file_ >= 0) ::close(file_);
}

bool Spool::spill(std::string_view bytes) {
  if (file_ < 0) {
    // O_TMPFILE: the file has no name, so nothing is left behind whatever happens to this process.
    file_ = ::open(spill_dir_.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (file_ < 0) {
      error_ = "cannot create a spill file in " + spill_dir_ + ": " + std::strerror(errno);
      return false;
    }
  }
  while (!bytes.empty()) {
    const ssize_t n = ::pwrite(file_, bytes.data(), bytes.size(), static_cast<off_t>(file_write_));
    if (n < 0) {
      if (errno == EINTR) continue;
      error_ = "cannot write the spill file in " + spill_dir_ + ": " + std::strerror(errno);
      return false;
    }
    file_write_ += static_cast<std::uint64_t>(n);
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  peak_spilled_ = std::max(peak_spilled_, file_write_ - file_read_);
  return true;
}

bool Spool::push(std::string_view bytes) {
  if (bytes.empty()) return true;
  {
    std::lock_guard lock(mu_);
    pushed_ += bytes.size();
    // Order: everything in memory is older than everything in the file, so once bytes go to the file, all
    // later ones do too until the consumer has read the file to its end.
    if (file_read_ < file_write_ || memory_bytes_ + bytes.size() > memory_limit_) {
      if (!spill(bytes)) return false;
    } else {
      // Small pushes are appended to the last chunk so that the consumer reads in large pieces.
      if (!chunks_.empty() && chunks_.back().size() < 64 * 1024)
        chunks_.back().append(bytes);
      else
        chunks_.emplace_back(bytes);
      memory_bytes_ += bytes.size();
    }
  }
  ready_.notify_one();
  return true;
}

void Spool::close(std::string error) {
  {
    std::lock_guard lock(mu_);
    if (closed_) return;  // the first reason stands
    closed_ = true;
    closed_error_ = std::move(error);
  }
  ready_.notify_all();
}

long Spool::read(char* dst, std::size_t n, std::chrono::steady_clock::time_point deadline) {
  std::unique_lock lock(mu_);
  if (!ready_.wait_until(lock, deadline,
                         [&] { return !chunks_.empty() || file_read_ < file_write_ || closed_; }))
    return -1;
  if (!chunks_.empty()) {
    auto& front = chunks_.front();
    const std::size_t take = std::min(n, front.size() - front_offset_);
    std::memcpy(dst, front.data() + front_offset_, take);
    front_offset_ += take;
    memory_bytes_ -= take;
    if (front_offset_ == front.size()) {
      chunks_.pop_front();
      front_offset_ = 0;
    }
    return static_cast<long>(take);
  }
  if (file_read_ < file_write_) {
    const std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(n, file_write_ - file_read_));
    ssize_t got;
    do {
      got = ::pread(file_, dst, take, static_cast<off_t>(file_read_));
    } while (got < 0 && errno == EINTR);
    if (got <= 0) {
      closed_ = true;
      closed_error_ = "cannot read the spill file: " + std::string(got < 0 ? std::strerror(errno) : "short");
      return 0;
    }
    file_read_ += static_cast<std::uint64_t>(got);
    if (file_read_ == file_write_) {
      // Drained: start over at the beginning of the file, and take new bytes into memory again.
      file_read_ = file_write_ = 0;
      // Give the disk space back; a failure only means the file keeps its size until the next spill reuses
      // it.
      [[maybe_unused]] const int rc = ::ftruncate(file_, 0);
    }
    return got;
  }
  return 0;  // closed and drained
}

std::string Spool::closed_error() const {
  std::lock_guard lock(mu_);
  return closed_error_;
}

std::uint64_t Spool::backlog() const {
  std::lock_guard lock(mu_);
  return memory_bytes_ + (file_write_ - file_read_);
}

std::uint64_t Spool::spilled() const {
  std::lock_guard lock(mu_);
  return file_write_ - file_read_;
}

std::uint64_t Spool::total_pushed() const {
  std::lock_guard lock(mu_);
  return pushed_;
}

std::uint64_t Spool::peak_spilled() const {
  std::lock_guard lock(mu_);
  return peak_spilled_;
}

}  // namespace slotshift
