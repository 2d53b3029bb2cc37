// Every error reply a client of slotshift-proxy can see that the proxy itself writes, in one place. Where
// Redis has its own wording for the same situation, the proxy uses it, so clients and their error handling
// behave as with a single Redis.
#pragma once

#include <string>
#include <string_view>

namespace slotshift::proxy::errors {

// An error reply is one line: CR and LF inside it (from a client's bytes quoted back, or a node's reply
// quoted in a merge error) would end it early and leave the rest to be read as further replies, breaking the
// client's stream. They become spaces, as Redis does when it quotes client input in an error.
inline std::string one_line(std::string error) {
  if (error.size() < 3 || error[0] != '-') return error;
  for (std::size_t i = 1; i + 2 < error.size(); ++i) {
    if (error[i] == '\r' || error[i] == '\n') error[i] = ' ';
  }
  return error;
}

// Redis's own errors.
inline std::string unknown_command(std::string_view name, std::string_view args_preview) {
  return "-ERR unknown command '" + std::string(name) +
         "', with args beginning with: " + std::string(args_preview) + "\r\n";
}
inline std::string wrong_arity(std::string_view name) {
  return "-ERR wrong number of arguments for '" + std::string(name) + "' command\r\n";
}
inline constexpr std::string_view kCrossSlot = "-CROSSSLOT Keys in request don't hash to the same slot\r\n";
inline constexpr std::string_view kSyntax = "-ERR syntax error\r\n";
inline constexpr std::string_view kDbIndexOutOfRange = "-ERR DB index is out of range\r\n";
inline constexpr std::string_view kSelectNotAllowed = "-ERR SELECT is not allowed in cluster mode\r\n";
inline constexpr std::string_view kNotInteger = "-ERR value is not an integer or out of range\r\n";
inline constexpr std::string_view kNoProto = "-NOPROTO sorry, this protocol version is not supported\r\n";
inline constexpr std::string_view kMultiNested = "-ERR MULTI calls can not be nested\r\n";
inline constexpr std::string_view kExecWithoutMulti = "-ERR EXEC without MULTI\r\n";
inline constexpr std::string_view kDiscardWithoutMulti = "-ERR DISCARD without MULTI\r\n";
inline constexpr std::string_view kExecAbort =
    "-EXECABORT Transaction discarded because of previous errors.\r\n";
inline constexpr std::string_view kWatchInMulti = "-ERR WATCH inside MULTI is not allowed\r\n";
// Not an error: EXEC's answer when a watched key changed (the transaction did not run).
inline constexpr std::string_view kNilArray = "*-1\r\n";
inline constexpr std::string_view kNotAllowedInMulti = "-ERR Command not allowed inside a transaction\r\n";
inline constexpr std::string_view kInvalidCursor = "-ERR invalid cursor\r\n";
inline constexpr std::string_view kClientReplySyntax = "-ERR syntax error\r\n";
inline constexpr std::string_view kClientNameChars =
    "-ERR Client names cannot contain spaces, newlines or special characters.\r\n";
inline constexpr std::string_view kClusterDisabled = "-ERR This instance has cluster support disabled\r\n";
inline constexpr std::string_view kNoAuth = "-NOAUTH Authentication required.\r\n";
inline constexpr std::string_view kWrongPass =
    "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
inline constexpr std::string_view kHelloNoAuth =
    "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH "
    "<user> <pass> option can be used to authenticate the client and select the RESP protocol version at "
    "the same time\r\n";
inline constexpr std::string_view kAuthNotConfigured =
    "-ERR AUTH <password> called without any password configured for the default user. Are you sure your "
    "configuration is correct?\r\n";
// A command that reads or writes the keyspace, sent by a client in monitor mode (Redis 7.0 counts a monitor
// among its replicas).
inline constexpr std::string_view kMonitorKeyspace = "-ERR Replica can't interact with the keyspace\r\n";
inline std::string protocol_error(std::string_view message) {
  return "-ERR " + std::string(message) + "\r\n";
}

// The proxy's own situations. They start with ERR (so clients treat them as command errors) and say
// "slotshift" so that a user can tell them from the server's.
inline std::string refused_admin(std::string_view name) {
  return "-ERR slotshift-proxy refuses '" + std::string(name) +
         "': administrative commands are not fanned out to the cluster unless allow-admin-commands is "
         "set\r\n";
}
inline std::string unsupported(std::string_view name, std::string_view why) {
  return "-ERR slotshift-proxy does not support '" + std::string(name) + "': " + std::string(why) + "\r\n";
}
// A command that would change the state of the connection it runs on: inside MULTI it would reach the shared
// connection to a node when EXEC runs, and change it for every client of the proxy.
inline std::string unsupported_in_multi(std::string_view name, std::string_view why) {
  return "-ERR slotshift-proxy does not support '" + std::string(name) +
         "' inside MULTI: " + std::string(why) + "\r\n";
}
// A command other than these in subscribed mode (RESP2), in Redis's words.
inline std::string subscribed_only(std::string_view command) {
  return "-ERR Can't execute '" + std::string(command) +
         "': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n";
}
inline std::string too_many_blocking(std::size_t limit) {
  return "-ERR slotshift-proxy: too many blocking commands at once (max-blocking-connections is " +
         std::to_string(limit) + "); try again later\r\n";
}
inline constexpr std::string_view kScanCursorTooLarge =
    "-ERR slotshift-proxy: a node answered SCAN with a cursor too large to carry in the proxy's cursor\r\n";
inline std::string timeout(std::string_view cause) {
  return "-ERR slotshift-proxy: request timed out: " + std::string(cause) + "\r\n";
}
// A request that could not be sent again without letting a later command of its client overtake it, and whose
// failure was the proxy's own (a connection that could not be opened, say).
inline std::string not_retried(std::string_view cause) {
  return "-ERR slotshift-proxy: not applied: " + std::string(cause) +
         " (a later command of this connection for the same slot already ran, so it was not sent again)\r\n";
}
inline std::string backend_lost(std::string_view node) {
  return "-ERR slotshift-proxy: connection to " + std::string(node) +
         " was lost after the command was sent; it may or may not have been applied\r\n";
}
inline std::string no_owner(unsigned slot) {
  return "-CLUSTERDOWN slotshift-proxy: no node serves hash slot " + std::to_string(slot) +
         " (topology unknown or slot uncovered)\r\n";
}
inline std::string too_many_redirects(std::string_view last) {
  return "-ERR slotshift-proxy: too many redirects, last: " + std::string(last) + "\r\n";
}
// A node's reply that a split or fanned-out command cannot merge (its first bytes quoted).
inline std::string merge_unexpected(std::string_view what) {
  return one_line("-ERR slotshift-proxy: unexpected reply from a node while merging: " +
                  std::string(what.substr(0, 60)) + "\r\n");
}
// A node refused the login a command was to run as (the proxy's own, or a client's with ACL pass-through):
// the command was not run.
inline std::string login_refused(std::string_view node, std::string_view user, std::string_view reason) {
  return one_line("-ERR slotshift-proxy: " + std::string(node) + " refused the login as user '" +
                  std::string(user) + "' (" + std::string(reason) + "); the command was not run\r\n");
}
// A node refused HELLO 3 or CLIENT TRACKING on the connection a command was to run on: the command was not
// run.
inline std::string setup_refused(std::string_view node, std::string_view reason) {
  return one_line("-ERR slotshift-proxy: " + std::string(node) + " refused to set up the connection (" +
                  std::string(reason) + "); the command was not run\r\n");
}
// A client's AUTH could not be checked with the cluster (ACL pass-through): no node answered in time.
inline std::string login_unchecked(std::string_view why) {
  return one_line("-ERR slotshift-proxy: could not check the login with the cluster: " + std::string(why) +
                  "\r\n");
}
// INFO needs every master's answer: one that failed (its own error, or the proxy's timeout) fails the whole.
inline std::string info_node_failed(std::string_view error, std::string_view node) {
  return one_line("-" + std::string(error) + " (from " + std::string(node) +
                  ", one of the masters INFO adds up)\r\n");
}
// CONFIG SET, RESETSTAT or REWRITE sent to every node: the first node that did not answer OK, in its own
// words, and how many did (those keep what they applied: the nodes may now differ).
inline std::string every_node_failed(std::string_view error, std::string_view node, std::size_t ok,
                                     std::size_t total) {
  return one_line("-" + std::string(error) + " (from " + std::string(node) + "; " + std::to_string(ok) +
                  " of " + std::to_string(total) + " nodes answered OK)\r\n");
}
// Administrative commands the proxy answers about its own clients.
inline std::string refused_admin_local(std::string_view name) {
  return "-ERR slotshift-proxy refuses '" + std::string(name) +
         "': administrative commands are refused unless allow-admin-commands is set\r\n";
}
// CONFIG SET and the like inside MULTI: a transaction runs on one node.
inline constexpr std::string_view kEveryNodeWhy = "it concerns every node, and a transaction runs on one";
// CLIENT subcommands the proxy does not answer.
inline constexpr std::string_view kClientOthersWhy =
    "only SETNAME, GETNAME, ID, INFO, SETINFO, REPLY, LIST and KILL are answered (about the proxy's own "
    "clients); the others concern a node's own connections";
// CLIENT TRACKING and CLIENT CACHING: Redis's own errors (the overlap errors are made in tracking.cc).
inline constexpr std::string_view kTrackingPrefixNeedsBcast =
    "-ERR PREFIX option requires BCAST mode to be enabled\r\n";
inline constexpr std::string_view kTrackingBcastSwitch =
    "-ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling "
    "it with a different mode.\r\n";
inline constexpr std::string_view kTrackingOptBcast =
    "-ERR OPTIN and OPTOUT are not compatible with BCAST\r\n";
inline constexpr std::string_view kTrackingOptBoth =
    "-ERR You can't specify both OPTIN mode and OPTOUT mode\r\n";
inline constexpr std::string_view kTrackingOptSwitch =
    "-ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling "
    "it with a different mode.\r\n";
inline constexpr std::string_view kCachingNotTracking =
    "-ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode "
    "enabled\r\n";
inline constexpr std::string_view kCachingYesNotOptin =
    "-ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.\r\n";
inline constexpr std::string_view kCachingNoNotOptout =
    "-ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.\r\n";
inline std::string tracking_prefix_overlap(std::string_view prefix, std::string_view other, bool existing) {
  return "-ERR Prefix '" + std::string(prefix) + "' overlaps with " +
         (existing ? "an existing prefix '" : "another provided prefix '") + std::string(other) +
         "'. Prefixes for a single client must not overlap.\r\n";
}
// REDIRECT sends invalidations to another connection, in RESP2 as Pub/Sub messages of that one.
inline constexpr std::string_view kTrackingRedirectWhy =
    "invalidations come on the tracking client's own connection as RESP3 pushes (HELLO 3); REDIRECT to "
    "another connection is not carried";
// Redis's own CLIENT LIST and CLIENT KILL errors.
inline constexpr std::string_view kNoSuchClient = "-ERR No such client\r\n";
inline constexpr std::string_view kClientIdPositive = "-ERR client-id should be greater than 0\r\n";
inline constexpr std::string_view kInvalidClientId = "-ERR Invalid client ID\r\n";
inline std::string unknown_client_type(std::string_view type) {
  return one_line("-ERR Unknown client type '" + std::string(type) + "'\r\n");
}
inline std::string no_such_user(std::string_view user) {
  return one_line("-ERR No such user '" + std::string(user) + "'\r\n");
}
inline constexpr std::string_view kMaxClients = "-ERR max number of clients reached\r\n";
inline constexpr std::string_view kTransactionTooBig =
    "-ERR slotshift-proxy: transaction too large (queued commands exceed the request size limit)\r\n";

}  // namespace slotshift::proxy::errors
