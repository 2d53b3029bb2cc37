// A read buffer for one connection: libuv reads into its free tail, the parser consumes from its head.
// Consumed bytes are dropped by moving the unconsumed rest to the front only when the free space runs short,
// so a stream of small messages costs no copying at all and a large one is copied at most once.
#pragma once

#include <uv.h>

#include <cstddef>
#include <cstring>
#include <memory>
#include <string_view>

namespace slotshift::proxy {

class ReadBuffer {
 public:
  explicit ReadBuffer(std::size_t initial = 16 * 1024) : data_(new char[initial]), capacity_(initial) {}

  // Room for the next read of at least `min_free` bytes; `expected_total` (from the scanner's size_hint())
  // lets a large message be given its whole size at once.
  uv_buf_t prepare(std::size_t min_free, std::size_t expected_total = 0) {
    std::size_t need = std::max(min_free, expected_total > size() ? expected_total - size() : 0);
    if (capacity_ - end_ < need) {
      if (begin_ > 0 && capacity_ - size() >= need && size() < capacity_ / 2) {
        std::memmove(data_.get(), data_.get() + begin_, size());
        end_ -= begin_;
        begin_ = 0;
      } else {
        std::size_t cap = capacity_;
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

 private:
  // Moves the unconsumed bytes to the front of a new allocation of `cap` bytes.
  void reallocate(std::size_t cap) {
    std::unique_ptr<char[]> fresh(new char[cap]);
    std::memcpy(fresh.get(), data_.get() + begin_, size());
    data_ = std::move(fresh);
    capacity_ = cap;
    end_ -= begin_;
    begin_ = 0;
  }

  std::unique_ptr<char[]> data_;
  std::size_t capacity_;
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
};

}  // namespace slotshift::proxy
