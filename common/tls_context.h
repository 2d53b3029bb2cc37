// TLS settings and the OpenSSL context built from them, for both programs' connections: the proxy's clients
// (server side) and every connection to a cluster node (client side). Only files and certificates here; how
// the encrypted bytes reach a socket is each program's own (memory BIOs over libuv in the proxy, a blocking
// SSL over a polled socket in the orchestrator).
#pragma once

#include <memory>
#include <string>

using SSL_CTX = struct ssl_ctx_st;
using SSL = struct ssl_st;

namespace slotshift {

// The files and checks of one side, named after Redis's own tls-* settings.
struct TlsSettings {
  bool enabled = false;
  std::string cert_file;     // this side's certificate (a server's, or a client's when the peer asks for one)
  std::string key_file;      // its private key
  std::string ca_cert_file;  // CAs that sign the peer's certificate
  std::string ca_cert_dir;   // the same, as an OpenSSL hashed directory
  // Client side: the name sent as SNI and checked against the node's certificate. Empty: the chain is checked
  // but not the name, as Redis's own nodes check each other (they are addressed by IP).
  std::string server_name;
  // Server side, as Redis's tls-auth-clients: kYes requires a client certificate signed by one of the CAs,
  // kOptional checks one if sent, kNo asks for none.
  enum class AuthClients : unsigned char { kNo, kYes, kOptional };
  AuthClients auth_clients = AuthClients::kYes;
  friend bool operator==(const TlsSettings&, const TlsSettings&) = default;
};

// "yes", "no", "optional"; false for anything else.
bool parse_tls_auth_clients(const std::string& text, TlsSettings::AuthClients& into);

// An SSL_CTX, shared by the connections made with it. OpenSSL counts the connections' references itself, so
// a context replaced by a reload lives on for the connections that already use it.
class TlsContext {
 public:
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  // Loads the files of `settings` for the side given; nullptr and a message naming the file and OpenSSL's
  // reason when one cannot be used.
  static std::shared_ptr<TlsContext> server(const TlsSettings& settings, std::string& error);
  static std::shared_ptr<TlsContext> client(const TlsSettings& settings, std::string& error);

  SSL_CTX* get() const { return ctx_; }
  // A connection of this context, in the accepting or connecting state of its side, the server name (SNI,
  // and the check of the node's certificate) set on a client's. nullptr when OpenSSL cannot make one.
  SSL* new_connection() const;

 private:
  TlsContext() = default;
  SSL_CTX* ctx_ = nullptr;
  bool server_side_ = false;
  std::string server_name_;
};

// OpenSSL's error queue as one line (and the queue emptied); `fallback` when it is empty.
std::string tls_error_text(const char* fallback = "TLS failure");

}  // namespace slotshift
