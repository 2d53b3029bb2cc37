#include "proxy/tls_channel.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

namespace slotshift::proxy {

namespace {
// One TLS record's worth: a read never brings more plaintext than this into the connection's buffer. One per
// thread, not per connection: libuv calls a stream's read callback right after its allocation callback, and
// decrypt() copies the bytes out before anything else runs, so an idle TLS client holds no read buffer.
constexpr std::size_t kScratch = 16 * 1024 + 512;
thread_local char scratch[kScratch];
}  // namespace

std::unique_ptr<TlsChannel> TlsChannel::make(const TlsContext& context, std::string& error) {
  std::unique_ptr<TlsChannel> channel(new TlsChannel);
  channel->ssl_ = context.new_connection();
  channel->in_bio_ = BIO_new(BIO_s_mem());
  channel->out_bio_ = BIO_new(BIO_s_mem());
  if (!channel->ssl_ || !channel->in_bio_ || !channel->out_bio_) {
    if (channel->in_bio_) BIO_free(channel->in_bio_);
    if (channel->out_bio_) BIO_free(channel->out_bio_);
    channel->in_bio_ = channel->out_bio_ = nullptr;
    error = tls_error_text("cannot create a TLS connection");
    return nullptr;
  }
  // An empty memory BIO means "nothing yet", not end of file: reads then ask for more (WANT_READ).
  BIO_set_mem_eof_return(channel->in_bio_, -1);
  SSL_set_bio(channel->ssl_, channel->in_bio_, channel->out_bio_);
  return channel;
}

namespace {
// Below this a memory BIO's buffer is not worth replacing.
constexpr std::size_t kShedAbove = 4096;
}  // namespace

void TlsChannel::shed_input() {
  BIO* fresh = BIO_new(BIO_s_mem());
  if (!fresh) return;  // kept as it is: it still works
  BIO_set_mem_eof_return(fresh, -1);
  SSL_set0_rbio(ssl_, fresh);  // frees the old one
  in_bio_ = fresh;
}

void TlsChannel::shed_output() {
  BIO* fresh = BIO_new(BIO_s_mem());
  if (!fresh) return;
  SSL_set0_wbio(ssl_, fresh);
  out_bio_ = fresh;
}

TlsChannel::~TlsChannel() {
  if (ssl_) SSL_free(ssl_);  // frees both BIOs
}

uv_buf_t TlsChannel::read_space() {
  return uv_buf_init(scratch, kScratch);
}

bool TlsChannel::start() {
  // OpenSSL's error queue is the thread's, shared by every connection of the worker: a stale entry would make
  // the next call's outcome look like a failure.
  ERR_clear_error();
  const int rc = SSL_do_handshake(ssl_);
  return rc == 1 || usable_after(rc);
}

bool TlsChannel::handshake_done() const {
  return SSL_is_init_finished(ssl_) == 1;
}

bool TlsChannel::has_input() const {
  return BIO_ctrl_pending(in_bio_) > 0 || SSL_has_pending(ssl_) == 1;
}

bool TlsChannel::has_output() const {
  return BIO_ctrl_pending(out_bio_) > 0;
}

void TlsChannel::take_output(std::string& wire) {
  const std::size_t pending = BIO_ctrl_pending(out_bio_);
  if (pending == 0) return;
  const std::size_t at = wire.size();
  wire.resize(at + pending);
  const int got = BIO_read(out_bio_, wire.data() + at, static_cast<int>(pending));
  wire.resize(at + static_cast<std::size_t>(got > 0 ? got : 0));
  if (pending > kShedAbove && BIO_ctrl_pending(out_bio_) == 0) shed_output();
}

bool TlsChannel::usable_after(int rc) {
  switch (SSL_get_error(ssl_, rc)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:  // a memory BIO takes every write; kept for completeness
      return true;
    case SSL_ERROR_ZERO_RETURN:
      // close_notify: a clean end, not a failure (decrypt() reports it through peer_closed()).
      peer_closed_ = true;
      error_ = "the peer closed the TLS connection";
      return false;
    case SSL_ERROR_SSL: {
      error_ = tls_error_text();
      // A refused certificate: OpenSSL's queue says "certificate verify failed", the result says which check.
      const long verify = SSL_get_verify_result(ssl_);
      if (verify != X509_V_OK) error_ += std::string(" (") + X509_verify_cert_error_string(verify) + ")";
      return false;
    }
    default:
      error_ = tls_error_text("TLS failure");
      return false;
  }
}

long TlsChannel::decrypt(std::size_t n, ReadBuffer& in) {
  if (n > 0 && BIO_write(in_bio_, scratch, static_cast<int>(n)) != static_cast<int>(n)) {
    ERR_clear_error();
    error_ = "out of memory for TLS input";
    return -1;
  }
  long total = 0;
  for (;;) {
    // Room for a whole record: SSL_read hands over at most one record's plaintext per call.
    const uv_buf_t room = in.prepare(16 * 1024);
    std::size_t got = 0;
    ERR_clear_error();
    const int rc = SSL_read_ex(ssl_, room.base, room.len, &got);
    if (rc == 1) {
      in.commit(got);
      total += static_cast<long>(got);
      continue;
    }
    // What came before a close_notify is the peer's last word: it is used, then the connection ends.
    if (!usable_after(0) && !peer_closed_) return -1;
    if (n > kShedAbove && BIO_ctrl_pending(in_bio_) == 0) shed_input();
    return total;
  }
}

long TlsChannel::encrypt(std::string_view plain) {
  if (plain.empty()) return 0;
  std::size_t taken = 0;
  ERR_clear_error();
  const int rc = SSL_write_ex(ssl_, plain.data(), plain.size(), &taken);
  if (rc == 1) return static_cast<long>(taken);
  return usable_after(0) ? 0 : -1;
}

}  // namespace slotshift::proxy
