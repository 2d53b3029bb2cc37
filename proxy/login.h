// Who a connection to a node logs in as: the proxy's own login to the cluster (masteruser/masterauth), or,
// with ACL pass-through, the login a client gave. Shared by the connections that use it and the requests sent
// on them, so that a request always runs as the client that sent it, whatever connection it ends up on.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "common/host_port.h"
#include "common/resp.h"

namespace slotshift::proxy {

struct Login {
  std::string user;      // empty: the default user (AUTH with the password alone)
  std::string password;  // never empty

  friend bool operator==(const Login&, const Login&) = default;
};
using LoginPtr = std::shared_ptr<const Login>;

// The proxy's own login to the nodes (masteruser, masterauth): null when there is no password (no AUTH).
inline LoginPtr own_login(const std::string& user, const std::string& password) {
  return password.empty() ? nullptr : std::make_shared<const Login>(Login{user, password});
}

// The AUTH command for `login`, as sent to a node.
inline std::string auth_command(const Login& login) {
  std::string wire;
  if (login.user.empty()) {
    resp::append_command(wire, {"AUTH", login.password});
  } else {
    resp::append_command(wire, {"AUTH", login.user, login.password});
  }
  return wire;
}

// Whether two logins are the same user with the same password (null: the proxy's own).
inline bool same_login(const LoginPtr& a, const LoginPtr& b) {
  return a == b || (a && b && *a == *b);
}

// What tells apart connections to `node` by who they log in as (null: the proxy's own login, keyed by the
// address alone) and the protocol they speak. A user's name and password hold any byte but NUL; the key never
// leaves the process.
inline std::string connection_key(const LoginPtr& login, const HostPort& node, int protocol = 2) {
  std::string key;
  if (protocol != 2) key.append("resp").append(std::to_string(protocol)).append(1, '\0');
  if (login) key.append(login->user).append(1, '\0').append(login->password).append(1, '\0');
  return key.append(node.str());
}

// Whether `given` equals `expected`, in a time that depends on `expected`'s length alone: neither where the
// first difference is nor how long `given` is shows in how long it takes. A shorter `given` is compared as if
// padded with zeros, and a length that differs fails on its own.
inline bool same_secret(std::string_view given, std::string_view expected) {
  unsigned char differ = given.size() == expected.size() ? 0 : 1;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    differ |= static_cast<unsigned char>(g ^ static_cast<unsigned char>(expected[i]));
  }
  return differ == 0;
}

}  // namespace slotshift::proxy
