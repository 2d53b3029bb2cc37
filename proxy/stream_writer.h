// Output for one libuv stream. Bytes are gathered in a buffer while a batch of work is processed and written
// once per flush: straight to the socket when it takes them (uv_try_write, no allocation), and the rest with
// one uv_write whose buffer lives until libuv is done with it.
#pragma once

#include <uv.h>

#include <cstdint>
#include <string>

#include "proxy/tls_channel.h"

namespace slotshift::proxy {

class StreamWriter {
 public:
  // `stream` must stay open while writes are in flight; libuv calls every write callback (with UV_ECANCELED
  // if need be) before the handle's close callback, so an owner that frees the writer in its close callback
  // is safe.
  void attach(uv_stream_t* stream) { stream_ = stream; }
  // From now on the bytes go through `tls` (which must outlive the writer's writes): plaintext is encrypted
  // a piece at a time as the socket takes the ciphertext, so a large reply is never held twice over.
  void use_tls(TlsChannel* tls) { tls_ = tls; }

  std::string& buffer() { return out_; }
  // Bytes accepted but not yet handed to the kernel.
  std::size_t pending_bytes() const { return out_.size() - encrypted_ + in_flight_; }
  // Bytes handed to the kernel since attach, in total, as far as the write callbacks have said.
  std::uint64_t written_total() const { return written_; }
  // Bytes the kernel has taken since attach, counting those of a write still in progress: libuv writes a
  // queued buffer piece by piece and calls back only once the whole buffer is out, so a connection that dies
  // meanwhile has sent more than written_total() says. What lies beyond this count never left the process.
  //
  // With TLS, plaintext counts as handed to the kernel once it is encrypted: what lies beyond still never
  // left.
  std::uint64_t kernel_total() const {
    if (tls_) return written_;
    const std::size_t queued = stream_ ? uv_stream_get_write_queue_size(stream_) : 0;
    return written_ + (in_flight_ > queued ? in_flight_ - queued : 0);
  }
  bool idle() const { return out_.empty() && in_flight_ == 0 && !(tls_ && tls_->has_output()); }

  // Returns a libuv error code (< 0) when the stream failed (UV_EPROTO: the TLS connection did); 0 otherwise.
  int flush() {
    if (tls_) return flush_tls();
    if (out_.empty() || !stream_) return 0;
    if (in_flight_ > 0) return 0;  // the write callback flushes what gathered meanwhile
    uv_buf_t buf = uv_buf_init(out_.data(), static_cast<unsigned>(out_.size()));
    int n = uv_try_write(stream_, &buf, 1);
    if (n == UV_EAGAIN || n == UV_ENOSYS) n = 0;
    if (n < 0) return n;
    written_ += static_cast<std::uint64_t>(n);
    if (static_cast<std::size_t>(n) == out_.size()) {
      release_if_large();
      return 0;
    }
    // The rest is written from where the kernel stopped. When most of the buffer is still to go it is handed
    // on as it is (a large reply is never copied); when most of it is out, the rest is copied, so that a slow
    // reader's write never keeps more than twice its unwritten bytes.
    std::string data;
    std::size_t offset = static_cast<std::size_t>(n);
    if (offset > out_.size() - offset) {
      data.assign(out_, offset);
      release_if_large();
      offset = 0;
    } else {
      data.swap(out_);
    }
    return write_rest(std::move(data), offset);
  }

  // Called when a queued write failed (the owner closes the stream); set before flushing.
  void (*on_error)(void* owner, int status) = nullptr;
  void* owner = nullptr;

 private:
  struct Write {
    uv_write_t req;
    StreamWriter* writer;
    std::string data;
  };

  // Plaintext is encrypted a record (16 KB) at a time, the ciphertext drained after each, so the TLS
  // connection's own output buffer never grows past one record; up to kTlsBatch of ciphertext goes to the
  // kernel (or one uv_write) before more is encrypted.
  static constexpr std::size_t kTlsRecord = 16 * 1024;
  static constexpr std::size_t kTlsBatch = 256 * 1024;

  int flush_tls() {
    if (!stream_ || in_flight_ > 0) return 0;  // the write callback flushes again
    std::string wire;
    for (;;) {
      tls_->take_output(wire);  // a handshake's flight, or an alert
      while (encrypted_ < out_.size() && wire.size() < kTlsBatch) {
        const std::size_t piece = std::min(kTlsRecord, out_.size() - encrypted_);
        const long n = tls_->encrypt(std::string_view(out_).substr(encrypted_, piece));
        if (n < 0) return UV_EPROTO;
        if (n == 0) break;  // the handshake is not done yet: the rest waits for the peer
        encrypted_ += static_cast<std::size_t>(n);
        written_ += static_cast<std::uint64_t>(n);
        tls_->take_output(wire);
      }
      if (encrypted_ > 0 && encrypted_ == out_.size()) {
        release_if_large();
        encrypted_ = 0;
      } else if (encrypted_ >= kTlsBatch && encrypted_ >= out_.size() / 2) {
        // A reader slower than the replies keep coming: out_ never empties, so what is encrypted goes now, or
        // it would stay for the connection's life (and outside pending_bytes(), so outside every bound).
        out_.erase(0, encrypted_);
        encrypted_ = 0;
      }
      if (wire.empty()) return 0;
      uv_buf_t buf = uv_buf_init(wire.data(), static_cast<unsigned>(wire.size()));
      int n = uv_try_write(stream_, &buf, 1);
      if (n == UV_EAGAIN || n == UV_ENOSYS) n = 0;
      if (n < 0) return n;
      if (static_cast<std::size_t>(n) < wire.size())
        return write_rest(std::move(wire), static_cast<std::size_t>(n));
      wire.clear();
      if (encrypted_ == out_.size() || !tls_->handshake_done()) return 0;
    }
  }

  // Queues `data` from `offset` on as one uv_write, whose buffer lives until libuv is done with it.
  int write_rest(std::string data, std::size_t offset) {
    auto* w = new Write;
    w->writer = this;
    w->data = std::move(data);
    in_flight_ = w->data.size() - offset;
    w->req.data = w;
    uv_buf_t rest = uv_buf_init(w->data.data() + offset, static_cast<unsigned>(in_flight_));
    const int rc = uv_write(&w->req, stream_, &rest, 1, &StreamWriter::on_write);
    if (rc < 0) {
      in_flight_ = 0;
      delete w;
      return rc;
    }
    return 0;
  }

  static void on_write(uv_write_t* req, int status) {
    auto* w = static_cast<Write*>(req->data);
    StreamWriter* self = w->writer;
    const std::size_t bytes = self->in_flight_;
    delete w;
    self->in_flight_ = 0;
    // A write that failed may have got part of its bytes (or all) to the node before the error: they count as
    // sent, so that what the owner does next never sends a command twice that may have run. (With TLS the
    // plaintext was counted when it was encrypted.)
    if (!self->tls_) self->written_ += bytes;
    if (status < 0) {
      if (status != UV_ECANCELED && self->on_error) self->on_error(self->owner, status);
      return;
    }
    if (!self->out_.empty() || (self->tls_ && self->tls_->has_output())) {
      const int rc = self->flush();
      if (rc < 0 && self->on_error) self->on_error(self->owner, rc);
    }
  }

  // Empties the buffer, giving its memory back when one large reply made it grow.
  void release_if_large() {
    if (out_.capacity() > (1u << 20)) {
      std::string().swap(out_);
    } else {
      out_.clear();
    }
  }

  uv_stream_t* stream_ = nullptr;
  TlsChannel* tls_ = nullptr;
  std::size_t encrypted_ = 0;  // with TLS: the head of out_ already encrypted
  std::string out_;
  std::size_t in_flight_ = 0;
  std::uint64_t written_ = 0;
};

}  // namespace slotshift::proxy
