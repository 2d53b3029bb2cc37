// The orchestrator as a replica of a source master: the handshake a real replica performs, PSYNC for a full
// resynchronisation, the snapshot in either framing, then the live write stream; REPLCONF ACKs so the master
// keeps the link. Everything received after the payload header goes into a Spool, so the source is read at
// the speed it sends whatever the consumer does.
//
// The protocol, as Redis 7.0 to 8.x and Valkey 8 and 9 speak it (see REDIS-FACTS.md, "Being a replica"):
//
//   -> [AUTH [user] password]                  <- +OK
//   -> PING                                    <- +PONG (or -NOAUTH)
//   -> REPLCONF listening-port <port>          <- +OK
//   -> REPLCONF capa [eof] capa psync2         <- +OK   (capa eof asks for a diskless snapshot)
//   -> [REPLCONF version <v>]                  <- +OK   (Valkey: which snapshot format to send)
//   -> PSYNC ? -1                              <- "\n"* +FULLRESYNC <replid> <offset>
//                                              <- "\n"* $<len>\r\n<len bytes>              (disk-based)
//                                                    or $EOF:<40 bytes>\r\n<bytes><the 40 bytes>  (diskless)
//                                              <- the stream: SELECT, writes, PING, REPLCONF GETACK *
//   -> REPLCONF ACK <offset>                   (no reply) every second, and at once on GETACK
//
// A diskless master sends nothing after the snapshot until the replica's first ACK, and it ignores ACKs that
// arrive before it has marked the replica online: the receiver therefore ACKs every 20 ms from the end of the
// payload until the first stream byte arrives, then every second.
//
// Offsets: the stream's first byte has the FULLRESYNC offset; every byte after it counts, SELECT and PING
// included. The ACKed offset is the one the consumer reports (set_applied_offset), never more, because a
// master counts ACKs for WAIT: slotshift's copier reports what the target has applied, and never past the
// first write it dropped (its slot does not move).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/host_port.h"
#include "orchestrator/node_client.h"
#include "orchestrator/socket.h"
#include "orchestrator/spool.h"

namespace slotshift {

struct ReplicaLinkOptions {
  HostPort source;
  Credentials credentials;
  bool diskless = false;  // announce capa eof: the master streams the snapshot from a fork (after
                          // repl-diskless-sync-delay) instead of writing an RDB file first
  // Valkey only: `REPLCONF version <v>`, so that a Valkey 9 master sends its own format (VALKEY080). Without
  // it, Valkey 9.1 writes REDIS0011 to a diskless replica and drops the link when a hash has field TTLs,
  // which that format cannot hold. Redis refuses the option, so it stays empty for Redis.
  std::string announce_version;
  std::chrono::milliseconds step_timeout{5000};  // each handshake reply
  std::chrono::seconds idle_timeout{60};         // nothing at all from the master for this long: give up
  std::size_t spool_memory = 256ull << 20;
  std::string spool_dir = "/tmp";
};

class ReplicaLink {
 public:
  ReplicaLink() = default;
  ~ReplicaLink();
  ReplicaLink(const ReplicaLink&) = delete;
  ReplicaLink& operator=(const ReplicaLink&) = delete;

  // The handshake up to the payload header, then starts the receiver thread. False (error()) on any refusal,
  // with the master's own words in the message.
  bool start(const ReplicaLinkOptions& options);
  // Closes the connection and joins the receiver. The spool is closed with `why` if it is still open.
  void stop(const std::string& why = "the link was stopped");

  const std::string& replid() const { return replid_; }
  std::int64_t initial_offset() const { return initial_offset_; }
  bool diskless() const { return !eof_mark_.empty(); }
  const std::string& eof_mark() const { return eof_mark_; }        // diskless: the 40 bytes after the payload
  std::int64_t payload_length() const { return payload_length_; }  // disk-based: the RDB's size; -1 otherwise

  // Payload bytes, then the mark (diskless), then the stream. Only after a successful start().
  Spool& spool() { return *spool_; }
  bool started() const { return spool_ != nullptr; }

  // The consumer's applied offset; ACKs carry it.
  void set_applied_offset(std::int64_t offset) { applied_.store(offset, std::memory_order_relaxed); }
  std::int64_t applied_offset() const { return applied_.load(std::memory_order_relaxed); }
  // Sends an ACK with the applied offset now (answering GETACK). Thread-safe.
  void send_ack();

  // The stream offset of the last byte received (valid once the payload is complete), and whether it is.
  std::int64_t received_offset() const { return received_offset_.load(std::memory_order_relaxed); }
  bool payload_complete() const { return payload_complete_.load(std::memory_order_acquire); }
  std::uint64_t bytes_received() const { return bytes_received_.load(std::memory_order_relaxed); }

  const std::string& error() const { return error_; }

 private:
  bool fail(std::string message);
  bool send_command(std::initializer_list<std::string_view> args);
  // Reads one "+..."/"-..." line, skipping the lone "\n" keepalives a master sends while it prepares the
  // snapshot.
  bool read_line(std::string& line, std::chrono::milliseconds timeout);
  bool expect_ok(std::initializer_list<std::string_view> args, const char* what);
  bool read_payload_header();
  void receive_loop();
  void note_received(const char* data, std::size_t n);

  ReplicaLinkOptions options_;
  Socket socket_;
  std::mutex write_mu_;
  std::string inbuf_;  // handshake bytes read but not consumed
  std::unique_ptr<Spool> spool_;
  std::thread receiver_;
  std::atomic<bool> stopping_{false};

  std::string replid_;
  std::int64_t initial_offset_ = 0;
  std::string eof_mark_;
  std::int64_t payload_length_ = -1;

  std::atomic<std::int64_t> applied_{0};
  std::atomic<std::int64_t> received_offset_{0};
  std::atomic<bool> payload_complete_{false};
  std::atomic<std::uint64_t> bytes_received_{0};
  // Receiver thread only.
  std::uint64_t payload_seen_ = 0;  // bytes after the header so far, until the payload is complete
  std::string tail_;                // diskless: the last 40 bytes received, to spot the mark

  std::string error_;
};

}  // namespace slotshift
