#include "common/tls_context.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

namespace slotshift {

bool parse_tls_auth_clients(const std::string& text, TlsSettings::AuthClients& into) {
  if (text == "yes") {
    into = TlsSettings::AuthClients::kYes;
  } else if (text == "no") {
    into = TlsSettings::AuthClients::kNo;
  } else if (text == "optional") {
    into = TlsSettings::AuthClients::kOptional;
  } else {
    return false;
  }
  return true;
}

std::string tls_error_text(const char* fallback) {
  std::string text;
  while (const unsigned long code = ERR_get_error()) {
    char line[256];
    ERR_error_string_n(code, line, sizeof line);
    if (!text.empty()) text += "; ";
    // "error:0A000086:SSL routines::certificate verify failed": the reason is what a user reads.
    const std::string_view full(line);
    const auto colon = full.rfind(':');
    text += colon == std::string_view::npos ? full : full.substr(colon + 1);
  }
  return text.empty() ? fallback : text;
}

TlsContext::~TlsContext() {
  if (ctx_) SSL_CTX_free(ctx_);
}

namespace {

// What both sides share: TLS 1.2 at least, this side's certificate if one is given, the CAs that sign the
// peer's. False with `error` set when a file cannot be used.
bool load_common(SSL_CTX* ctx, const TlsSettings& s, bool need_cert, std::string& error) {
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // TLS 1.2 renegotiation lets a peer make the other side redo handshakes at will: nothing here needs it.
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
  // A write may move in memory between tries (the proxy's buffers grow); an idle connection gives its record
  // buffers back (thousands of idle clients).
  SSL_CTX_set_mode(
      ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
  if (need_cert && (s.cert_file.empty() || s.key_file.empty())) {
    error = "a TLS server needs a certificate and its key (tls-cert-file, tls-key-file)";
    return false;
  }
  if (s.cert_file.empty() != s.key_file.empty()) {
    error = "a TLS certificate needs its key, and a key its certificate";
    return false;
  }
  if (!s.cert_file.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, s.cert_file.c_str()) != 1) {
      error = "cannot use the certificate " + s.cert_file + ": " + tls_error_text();
      return false;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, s.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
      error = "cannot use the private key " + s.key_file + ": " + tls_error_text();
      return false;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
      error = "the key " + s.key_file + " does not match the certificate " + s.cert_file;
      ERR_clear_error();
      return false;
    }
  }
  if (!s.ca_cert_file.empty() || !s.ca_cert_dir.empty()) {
    const char* file = s.ca_cert_file.empty() ? nullptr : s.ca_cert_file.c_str();
    const char* dir = s.ca_cert_dir.empty() ? nullptr : s.ca_cert_dir.c_str();
    if (SSL_CTX_load_verify_locations(ctx, file, dir) != 1) {
      error = "cannot load the CA certificates " + (file ? s.ca_cert_file : s.ca_cert_dir) + ": " +
              tls_error_text();
      return false;
    }
  }
  return true;
}

}  // namespace

std::shared_ptr<TlsContext> TlsContext::server(const TlsSettings& settings, std::string& error) {
  std::shared_ptr<TlsContext> context(new TlsContext);
  context->ctx_ = SSL_CTX_new(TLS_server_method());
  if (!context->ctx_) {
    error = tls_error_text("cannot create a TLS context");
    return nullptr;
  }
  if (!load_common(context->ctx_, settings, true, error)) return nullptr;
  const bool no_ca = settings.ca_cert_file.empty() && settings.ca_cert_dir.empty();
  switch (settings.auth_clients) {
    case TlsSettings::AuthClients::kNo:
      SSL_CTX_set_verify(context->ctx_, SSL_VERIFY_NONE, nullptr);
      break;
    case TlsSettings::AuthClients::kYes:
    case TlsSettings::AuthClients::kOptional:
      // As Redis: checking clients' certificates needs the CAs that sign them.
      if (no_ca) {
        error = "tls-auth-clients " +
                std::string(settings.auth_clients == TlsSettings::AuthClients::kYes ? "yes" : "optional") +
                " needs tls-ca-cert-file or tls-ca-cert-dir (or tls-auth-clients no)";
        return nullptr;
      }
      SSL_CTX_set_verify(context->ctx_,
                         settings.auth_clients == TlsSettings::AuthClients::kYes
                             ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                             : SSL_VERIFY_PEER,
                         nullptr);
      if (!settings.ca_cert_file.empty()) {
        // The names of the accepted CAs go to clients that must pick a certificate.
        SSL_CTX_set_client_CA_list(context->ctx_, SSL_load_client_CA_file(settings.ca_cert_file.c_str()));
      }
      break;
  }
  // Session resumption would need a shared cache across the workers' contexts: full handshakes only.
  SSL_CTX_set_session_cache_mode(context->ctx_, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(context->ctx_, 0);
  context->server_side_ = true;
  return context;
}

std::shared_ptr<TlsContext> TlsContext::client(const TlsSettings& settings, std::string& error) {
  std::shared_ptr<TlsContext> context(new TlsContext);
  context->ctx_ = SSL_CTX_new(TLS_client_method());
  if (!context->ctx_) {
    error = tls_error_text("cannot create a TLS context");
    return nullptr;
  }
  if (!load_common(context->ctx_, settings, false, error)) return nullptr;
  if (settings.ca_cert_file.empty() && settings.ca_cert_dir.empty() &&
      SSL_CTX_set_default_verify_paths(context->ctx_) != 1) {
    error = "cannot load the system's CA certificates: " + tls_error_text();
    return nullptr;
  }
  // A node's certificate is always checked against the CAs; a connection that fails the check fails.
  SSL_CTX_set_verify(context->ctx_, SSL_VERIFY_PEER, nullptr);
  context->server_name_ = settings.server_name;
  return context;
}

SSL* TlsContext::new_connection() const {
  SSL* ssl = SSL_new(ctx_);
  if (!ssl) return nullptr;
  if (server_side_) {
    SSL_set_accept_state(ssl);
    return ssl;
  }
  SSL_set_connect_state(ssl);
  // SSL_set_tlsext_host_name, spelled without the macro's C cast.
  if (!server_name_.empty() && (SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
                                         const_cast<char*>(server_name_.c_str())) != 1 ||
                                SSL_set1_host(ssl, server_name_.c_str()) != 1)) {
    SSL_free(ssl);
    return nullptr;
  }
  return ssl;
}

}  // namespace slotshift
