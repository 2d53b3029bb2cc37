// One TLS connection driven through memory: libuv reads ciphertext into read_space(), decrypt() turns it into
// plaintext in the connection's ReadBuffer, encrypt() takes plaintext, and take_output() hands over the
// ciphertext to write. The socket stays libuv's; OpenSSL never touches it, so the event loop, the buffers'
// bounds and the write path are the same with and without TLS.
#pragma once

#include <uv.h>

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "common/tls_context.h"
#include "proxy/buffer.h"

using BIO = struct bio_st;

namespace slotshift::proxy {

class TlsChannel {
 public:
  // A connection of `context`'s side: accepting (a client's) or connecting (to a node).
  static std::unique_ptr<TlsChannel> make(const TlsContext& context, std::string& error);
  ~TlsChannel();
  TlsChannel(const TlsChannel&) = delete;
  TlsChannel& operator=(const TlsChannel&) = delete;

  // Where libuv reads ciphertext: a fixed buffer of the thread's, so a connection's memory is bounded by what
  // it decrypts.
  static uv_buf_t read_space();
  // Takes the `n` bytes just read into read_space() (nothing may run in between) and decrypts whatever is
  // complete into `in`. Returns the plaintext bytes added (0 when a record or the handshake is not complete
  // yet), or -1 when the connection failed (error() says why: a certificate refused, a peer that does not
  // speak TLS, an alert).
  long decrypt(std::size_t n, ReadBuffer& in);
  // Encrypts as much of `plain` as the connection takes now: nothing until the handshake is done. Returns the
  // bytes taken, or -1 on failure.
  long encrypt(std::string_view plain);
  // Starts a client's handshake (its first flight goes out with the next take_output()).
  bool start();
  // Appends the ciphertext waiting to be sent to `wire`.
  void take_output(std::string& wire);
  bool has_output() const;
  // Ciphertext received and not decrypted yet: part of a record.
  bool has_input() const;
  bool handshake_done() const;
  // The peer ended the connection cleanly (close_notify): what came before it was decrypted and is to be
  // used, then the connection is over, as after a TCP FIN.
  bool peer_closed() const { return peer_closed_; }
  const std::string& error() const { return error_; }

 private:
  TlsChannel() = default;
  // SSL_ERROR_* of a call that returned `rc`: false (error_ set) when the connection failed.
  bool usable_after(int rc);

  SSL* ssl_ = nullptr;
  BIO* in_bio_ = nullptr;   // ciphertext from the peer, owned by ssl_
  BIO* out_bio_ = nullptr;  // ciphertext to the peer, owned by ssl_
  // Fresh memory BIOs once they are empty again after a large record: a memory BIO never gives back what it
  // grew to, and an idle connection should hold no buffers.
  void shed_input();
  void shed_output();

  std::string error_;
  bool peer_closed_ = false;
};

}  // namespace slotshift::proxy
