// A read buffer for one connection: libuv reads into its free tail, the parser consumes from its head.
// Consumed bytes are dropped by moving the unconsumed rest to the front only when the free space runs short,
// so a stream of small messages costs no copying at all and a large one is copied a few times at most.
//
// Memory: nothing is allocated until the first read, release() gives everything back when the buffer is
// empty (an idle client holds no buffer at all), and a size announced by a message header is believed only
// as far as the bytes already received: a 20-byte "$536870000" header reserves 1 MB, not 512 MB, and the
// buffer then doubles as the bytes arrive.
#pragma once

#include <uv.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string_view>

namespace slotshift::proxy {

class ReadBuffer {
 public:
  // What may be reserved ahead of the bytes received, on a header's word alone.
  static constexpr std::size_t kTrustedAhead = 1u << 20;

  explicit ReadBuffer(std::size_t initial = 16 * 1024) : initial_(initial) {}

  // Room for the next read of at least `min_free` bytes; `expected_total` (from the scanner's size_hint())
  // lets a large message be given more room at once, within what the bytes received so far justify.
  uv_buf_t prepare(std::size_t min_free, std::size_t expected_total = 0) {
    std::size_t ahead = expected_total > size() ? expected_total - size() : 0;
    ahead = std::min(ahead, std::max(size(), kTrustedAhead));
    const std::size_t need = std::max(min_free, ahead);
    if (capacity_ - end_ < need) {
      if (begin_ > 0 && capacity_ - size() >= need && size() < capacity_ / 2) {
        std::memmove(data_.get(), data_.get() + begin_, size());
        end_ -= begin_;
        begin_ = 0;
      } else {
        std::size_t cap = std::max(capacity_, initial_);
        while (cap - size() < need)
          cap *= 2;
        reallocate(cap);
      }
    }
    return uv_buf_init(data_.get() + end_,
                       static_cast<unsigned>(std::min<std::size_t>(capacity_ - end_, 1u << 30)));
  }
  void commit(std::size_t n) { end_ += n; }
  std::string_view data() const { return {data_.get() + begin_, size()}; }
  void consume(std::size_t n) {
    begin_ += n;
    if (begin_ == end_) begin_ = end_ = 0;
  }
  std::size_t size() const { return end_ - begin_; }
  std::size_t capacity() const { return capacity_; }
  // Gives memory back after a large message has passed.
  void shrink(std::size_t to) {
    if (capacity_ > to && size() <= to) reallocate(to);
  }
  // Frees the buffer if it holds nothing; the next prepare() allocates again.
  void release() {
    if (size() != 0 || !data_) return;
    data_.reset();
    capacity_ = begin_ = end_ = 0;
  }
  // After a message was consumed: a buffer much larger than what it holds gives the difference back, so one
  // large value does not keep its memory for the connection's lifetime.
  void trim(std::size_t keep) {
    if (capacity_ > std::max<std::size_t>(keep, 1u << 20) && size() < capacity_ / 8)
      shrink(std::max(keep, size() * 2));
  }

 private:
  // Moves the unconsumed bytes to the front, then resizes to `cap` bytes. With realloc, a large buffer
  // (which the C library maps on its own) grows or shrinks by remapping its pages instead of copying them and
  // touching fresh ones: on a virtual machine, page faults are what a large message costs most.
  void reallocate(std::size_t cap) {
    if (begin_ > 0 && size() > 0) std::memmove(data_.get(), data_.get() + begin_, size());
    end_ -= begin_;
    begin_ = 0;
    char* grown = static_cast<char*>(std::realloc(data_.get(), cap));
    if (!grown) throw std::bad_alloc();
    (void)data_.release();
    data_.reset(grown);
    capacity_ = cap;
  }

  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> data_;
  std::size_t initial_;
  std::size_t capacity_ = 0;
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
};

}  // namespace slotshift::proxy
