// One client connection: reads and parses its commands, sends each where it belongs without waiting for
// earlier replies, and writes the replies back in the order the commands came.
#pragma once

#include <uv.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/host_port.h"
#include "common/resp.h"
#include "proxy/buffer.h"
#include "proxy/request.h"
#include "proxy/stream_writer.h"

namespace slotshift::proxy {

class Worker;
class Backend;

class Session {
 public:
  // Accepts one pending connection of `server` (refusing it over max-clients).
  static void accept(Worker& worker, uv_stream_t* server);

  // Stops reading, drops what is queued and closes; the Session frees itself once libuv is done with it.
  void close();
  void on_request_done(Request& request);
  void check_idle(std::uint64_t now_ms);
  // The session's own connection to `node`, for blocking commands.
  Backend* dedicated(const HostPort& node);
  void check_deadlines(std::uint64_t now_ms);

  std::uint64_t id() const { return id_; }
  // Writes every reply that is ready, in order (called by the worker once per loop iteration).
  void flush_replies();

 private:
  using Args = std::span<const std::string_view>;

  friend class Worker;
  friend class HeldRequests;
  explicit Session(Worker& worker);
  ~Session();

  void on_read(ssize_t nread);
  void handle(Args args, std::string_view raw);
  // A command of the normal path: routed by its keys, split, fanned out, or sent to any master.
  void route(Args args, std::string_view raw, std::string name, const CommandInfo* cmd);
  // Commands the proxy answers itself (PING, SELECT, CLIENT, INFO, ...). False if `name` is not one of them.
  bool answer_locally(const std::string& name, Args args);
  void queue_transaction(Args args, std::string_view raw, std::string name, const CommandInfo* cmd);
  void exec_transaction();

  RequestPtr new_request(std::string name, const CommandInfo* cmd);
  // A reply the proxy writes itself, in its place among the client's pending replies.
  void answer(std::string_view name, std::string reply);
  void enqueue(const RequestPtr& request);
  void split(const RequestPtr& parent, Args args, const std::vector<std::size_t>& keys, std::size_t step);
  void fan_out(const RequestPtr& parent, Args args, Merge merge);
  void scan(Args args, const std::string& name, const CommandInfo* cmd);
  void pause_or_resume_reading();
  std::string info_reply(std::string_view section);

  static void on_alloc(uv_handle_t* handle, std::size_t suggested, uv_buf_t* buf);
  static void on_read_cb(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  static void on_write_error(void* owner, int status);

  Worker& worker_;
  uv_tcp_t tcp_{};
  ReadBuffer in_;
  StreamWriter out_;
  resp::Scanner scanner_;
  std::deque<RequestPtr> queue_;   // in the client's order; answered from the front
  std::vector<std::size_t> keys_;  // reused by keys_of
  std::uint64_t id_ = 0;
  std::string client_name_;
  std::string peer_;
  std::uint64_t created_ms_ = 0;
  std::uint64_t last_activity_ms_ = 0;
  bool reading_ = true;
  bool dirty_ = false;          // has replies ready; the worker flushes it at the end of the loop iteration
  std::size_t held_bytes_ = 0;  // replies answered but waiting behind an earlier, unanswered one
  bool closing_ = false;
  bool quit_after_flush_ = false;
  // Requests kept back for a slot hold, in the client's order (see held_requests.h); empty but during a hold.
  std::deque<RequestPtr> on_hold_;
  std::uint64_t next_seq_ = 0;  // numbers the client's commands (Request::seq)
  // Blocking commands get connections of their own, one per node, for as long as the client stays.
  std::map<std::string, std::unique_ptr<Backend>> dedicated_;

  // MULTI ... EXEC: commands are checked and queued here, then sent as one block to the node of their slot.
  bool in_multi_ = false;
  bool multi_failed_ = false;
  bool multi_has_slot_ = false;
  Slot multi_slot_ = 0;
  std::size_t multi_count_ = 0;
  std::string multi_wire_;
};

}  // namespace slotshift::proxy
