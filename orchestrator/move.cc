#include "orchestrator/move.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <future>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "common/server_info.h"
#include "common/topology.h"
#include "orchestrator/copier.h"
#include "orchestrator/fault_injection.h"
#include "orchestrator/journal.h"
#include "orchestrator/move_lease.h"
#include "orchestrator/native_migration.h"
#include "orchestrator/node_client.h"
#include "orchestrator/proxy_control.h"

namespace slotshift {
namespace {

using std::chrono::duration_cast;
using std::chrono::milliseconds;

std::atomic<int> g_interrupted{0};

extern "C" void on_interrupt(int sig) {
  g_interrupted.store(sig);
}

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

std::string with_commas(std::uint64_t n) {
  const std::string digits = std::to_string(n);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

// CLUSTER COUNTKEYSINSLOT of every slot, in one round trip; nullopt (c.error()) when the connection fails.
std::optional<std::vector<std::uint64_t>> count_keys(NodeClient& c, const std::vector<Slot>& slots) {
  std::vector<std::vector<std::string>> counts;
  counts.reserve(slots.size());
  for (const Slot s : slots)
    counts.push_back({"CLUSTER", "COUNTKEYSINSLOT", std::to_string(s)});
  auto replies = c.pipeline(counts);
  if (!replies) return std::nullopt;
  std::vector<std::uint64_t> out;
  out.reserve(replies->size());
  for (const auto& r : *replies)
    out.push_back(static_cast<std::uint64_t>(std::max<std::int64_t>(r.integer, 0)));
  return out;
}

std::string join(const std::vector<std::string>& parts, const std::string& separator = " ") {
  std::string out;
  for (const auto& p : parts)
    out += (out.empty() ? "" : separator) + p;
  return out;
}

struct Batch {
  std::vector<Slot> slots;
  std::uint64_t keys = 0, bytes = 0;
  // Measured.
  double pause_ms = 0;       // CLIENT PAUSE to CLIENT UNPAUSE on the source
  double wait_ms = 0;        // until the target had applied the source's offset
  double claim_ms = 0;       // first SETSLOT NODE until the source named the target as owner
  double claim_send_ms = 0;  // the claim's commands on the target
  double hold_ms = 0;        // the proxies' hold, from HOLD to RELEASE: what their clients waited at most
  int proxies_held = 0;
  double refuse_ms =
      0;  // writes refused on the source (servers that cannot keep the pause through the claim)
  double verify_ms = 0;                            // until every node agreed
  std::uint64_t source_keys = 0, target_keys = 0;  // counted during the fence
  int attempts = 0;
};

struct Source {
  Node node;
  HostPort address;
  ServerInfo info;
  std::vector<Slot> slots;
  std::uint64_t estimated_keys = 0;
  std::uint64_t estimated_bytes = 0;
  std::unique_ptr<SlotCopier> copier;
  NodeClient control;
  std::vector<Batch> batches;
  bool paused = false;
  // Servers that crash when they learn a claim while paused (ServerInfo::survives_paused_claim) are fenced
  // for the claim by refusing writes instead: min-replicas-to-write raised out of reach, then restored to
  // these values (read before the move starts).
  bool refusing = false;
  // Set when the source had still not learnt a claim at the deadline: its refusal of writes is the only fence
  // left, and it stays for an operator to lift once the source names the new owner.
  bool keep_refusing = false;
  std::string min_replicas_to_write, min_replicas_max_lag;
  bool can_refuse = false;  // both were read
};

// Which of some slots the target owns in its own view: the only word on a claim that counts (REDIS-FACTS, "A
// claim is never known from the reply alone").
struct TargetView {
  bool known = false;
  std::vector<Slot> owned, other;
  std::set<Slot> importing;           // of `other`, those the target still has in IMPORTING
  std::set<Slot> unbound;             // of `other`, those no master owns in the target's view
  std::map<Slot, std::string> owner;  // of `other`, the owner in the target's view
  std::string error;                  // why it is not known
};

}  // namespace

class MoveJob {
 public:
  MoveJob(const MoveOptions& options, std::ostream& out, std::ostream& err)
      : options_(options), out_(out), err_(err) {
    show_progress_ = options.progress && isatty(STDERR_FILENO);  // stderr: beside --json on stdout too
  }

  ~MoveJob() {
    if (journal_fd_ >= 0) ::close(journal_fd_);
  }
  MoveJob(const MoveJob&) = delete;
  MoveJob& operator=(const MoveJob&) = delete;

  int run();
  // slotshift abort (resume == false) and resume: the move of a journal, after a crash.
  int recover(bool resume);

 private:
  bool plan();
  bool estimate();
  void print_plan();
  bool prepare();
  bool copy();
  bool cut_over_all();
  // --engine native: every batch of every source by CLUSTER MIGRATESLOTS.
  bool migrate_native_all();
  bool migrate_native(Source& source, Batch& batch);
  bool fits_native(std::uint64_t keys) const;
  void learn_native(const Batch& batch);
  // One batch. True when it was claimed; false with `retry` set when it was abandoned before its claim and
  // may be tried again.
  bool cut_over(Source& source, Batch& batch, bool& retry);
  // After an error at or after a batch's first SETSLOT ... NODE: asks the target what it owns, keeps the
  // source fenced until it knows, and leaves the rest to rollback(). Always false (the move stops).
  void drop_setslot_connections();
  void follow_target_failover();
  bool settle_claim(Source& source, Batch& batch, const std::string& claim_error, bool held);
  TargetView target_view(const std::vector<Slot>& slots);
  bool wait_source_learns(Source& source, const std::vector<Slot>& slots);
  bool verify(const Batch& batch);
  bool settle();
  void release_proxies(const std::string& slots);
  std::optional<std::string> setslots(const std::vector<std::vector<std::vector<std::string>>>& groups);
  void route_and_release(const std::string& slots);
  void note_proxy_failures(const ProxyCalls& calls);
  bool purge_replica_keys(const Node& master, const std::string& importing_from,
                          const std::vector<Slot>& slots, bool set_importing, std::uint64_t& purged);
  bool clean_source_replicas();
  std::vector<Batch> plan_batches(const Source& source) const;
  double predicted_pause_ms(std::uint64_t keys, std::size_t slots) const;
  double stall_ms(const Batch& batch) const;
  bool fits(std::uint64_t keys, std::size_t slots) const;
  void learn_pause(const Batch& batch);
  void rollback();
  // Ends the source's fence: its pause, and the refusal of writes where that replaced the pause.
  bool unpause(Source& source);
  std::chrono::milliseconds learn_timeout() const;
  std::chrono::milliseconds claim_pause() const;
  std::optional<std::string> source_changed(const Source& source, const std::string& info) const;
  std::string copier_failure(Source& source);
  std::optional<std::string> target_replicas_behind(const Batch& batch, Clock::time_point deadline);
  std::string fence_left(const Source& source) const;
  bool refuse_writes(Source& source);
  void journal(const nlohmann::json& step);
  bool open_journal();
  void progress(const std::string& line);
  void end_progress();
  bool interrupted();
  void report(bool ok);
  bool fail(std::string message) {
    if (error_.empty()) error_ = std::move(message);
    return false;
  }
  NodeClient* control(const Node& node);

  MoveOptions options_;
  std::ostream& out_;
  std::ostream& err_;
  bool show_progress_ = false;
  bool progress_shown_ = false;
  std::string error_;
  std::vector<std::string> warnings_;
  std::vector<std::string> notes_;
  Clock::time_point started_ = Clock::now();
  double copy_s_ = 0, cutover_s_ = 0, cleanup_s_ = 0, settle_s_ = 0;

  Topology topology_;
  Node target_;
  HostPort target_address_;
  ServerInfo target_info_;
  NodeClient target_control_;
  NodeFanout target_fanout_;  // for SETSLOT (see setslots())
  bool target_fanout_connected_ = false;
  std::vector<Source> sources_;
  std::vector<Slot> skipped_;         // already on the target
  milliseconds node_timeout_{15000};  // the target's cluster-node-timeout
  std::vector<bool> importing_ = std::vector<bool>(kSlotCount);
  std::vector<bool> claimed_ = std::vector<bool>(kSlotCount);
  std::map<std::string, NodeClient> controls_;
  std::string connect_error_;  // why control() last returned nullptr
  std::unique_ptr<ProxyControl> proxies_;
  std::unique_ptr<MoveLease> lease_;
  std::string owner_;  // names this move's holds on the proxies
  std::set<std::string> proxy_warned_;
  std::mutex warnings_mu_;  // the proxies' route and release run beside the cutover's wait for the source
  int journal_fd_ = -1;
  std::string journal_path_;
  bool undo_complete_ = true;  // rollback() undid every slot it had to
  std::string move_id_;        // in every journal record
  // A batch's pause is a fixed part (PAUSE, INFO, the offset wait, the key counts, the claim's round trips)
  // plus the source's synchronous delete of the batch's keys when it learns the claim, which grows with the
  // keys. Both are learnt from the batches as they go; the first batch of a move is kept small to measure.
  // The claim costs per slot too (two commands on the target, measured at about 10 us each on 7.0.15).
  double pause_fixed_ms_ = 3.0;
  double pause_us_per_key_ = 2.0;
  double pause_us_per_slot_ = 15.0;
  double claim_floor_ms_ = 0;
  bool claim_floor_known_ = false, floor_warned_ = false;
  bool calibrated_ = false;
  std::string batch_source_;  // for messages of learn_pause()
  // --engine native: a batch's stall is a fixed part plus the source's delete of the moved keys.
  const bool native_ = options_.engine == "native";
  double native_floor_ms_ = 0;
  double native_batch_keys_ = 5000;  // keys per batch, steered by the stalls measured
};

bool MoveJob::interrupted() {
  if (const int sig = g_interrupted.load()) {
    fail(std::string("interrupted by ") + (sig == SIGINT ? "SIGINT" : "SIGTERM"));
    return true;
  }
  if (lease_ && !lease_->held()) {
    fail(lease_->lost_reason() + "; the move stops");
    return true;
  }
  return false;
}

// The journal: --journal, or a file of its own in journal_dir(), named after the move. Said on stderr at the
// start, so that whoever has to resume or abort the move knows where it is.
bool MoveJob::open_journal() {
  std::string path = options_.journal;
  if (path.empty()) {
    const std::string dir = journal_dir();
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    path = dir + "/" + move_id_ + ".journal";
  }
  journal_fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (journal_fd_ < 0) {
    err_ << "slotshift move: cannot open the journal " << path << ": " << std::strerror(errno)
         << " (--journal names another file)\n";
    return false;
  }
  journal_path_ = path;
  err_ << "slotshift move: journal " << path << " (slotshift resume|abort --journal " << path
       << " after a crash)\n";
  return true;
}

// One record, on disk before the step it names is acted on: written in one call and synced, so that a
// crash leaves either the whole line or none of it.
void MoveJob::journal(const nlohmann::json& step) {
  if (journal_fd_ >= 0) {
    nlohmann::json j = step;
    j["version"] = 1;
    j["move"] = move_id_;
    j["time_ms"] = duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    const std::string line = j.dump() + "\n";
    if (::write(journal_fd_, line.data(), line.size()) != static_cast<ssize_t>(line.size()) ||
        ::fdatasync(journal_fd_) != 0)
      warnings_.push_back("writing the journal " + journal_path_ + " failed: " + std::strerror(errno));
  }
  if (step.contains("step")) fault::at_step(step["step"].get<std::string>());
}

void MoveJob::progress(const std::string& line) {
  if (!show_progress_) return;
  err_ << "\r\033[K" << line << std::flush;
  progress_shown_ = true;
}

void MoveJob::end_progress() {
  if (progress_shown_) err_ << "\r\033[K" << std::flush;
  progress_shown_ = false;
}

NodeClient* MoveJob::control(const Node& node) {
  auto it = controls_.find(node.id);
  // A connection that failed (a node that stalled past the timeout, a dropped link) is replaced.
  if (it != controls_.end() && !it->second.usable()) {
    controls_.erase(it);
    it = controls_.end();
  }
  if (it == controls_.end()) {
    NodeClient c;
    if (!c.connect(HostPort{node.address(), node.port}, options_.common.timeout,
                   options_.common.credentials)) {
      connect_error_ = c.error();
      return nullptr;
    }
    it = controls_.emplace(node.id, std::move(c)).first;
  }
  return &it->second;
}

bool MoveJob::plan() {
  std::string error;
  const auto seed = parse_host_port(options_.common.cluster, error);
  if (!seed) return fail("--cluster: " + error);
  const auto parsed = parse_slot_list(options_.slots, error);
  if (!parsed) return fail("--slots: " + error);
  const std::vector<Slot>& slots = *parsed;
  if (!options_.proxies.empty() || !options_.proxy_dns.empty()) {
    proxies_ = std::make_unique<ProxyControl>(options_.proxies, options_.proxy_dns, options_.proxy_token,
                                              options_.common.timeout);
    owner_ = "slotshift-" + move_id_;
  }
  if (native_ && options_.fence == "proxy")
    return fail(
        "--engine native: the servers fence each handoff themselves (a short pause of the source's "
        "writes); --fence proxy applies to the default engine only");
  if (options_.fence == "proxy" && !proxies_)
    return fail("--fence proxy: the proxies are the fence, so name them with --proxy or --proxy-dns");

  const auto survey = survey_cluster(*seed, options_.common.timeout, options_.common.credentials);
  if (!survey.error.empty()) return fail(survey.error);
  if (!survey.unreachable.empty())
    return fail("every node must answer before slots move; unreachable: " + survey.unreachable.front());
  if (!survey.loading.empty())
    return fail("every node must answer before slots move; " + survey.loading.front() +
                " (--timeout-ms waits longer)");
  topology_ = survey.merged;
  // A move starts only from a clean cluster: an open slot, a failing node, two masters with one config epoch
  // or nodes that disagree are how clusters get broken, and a move would make it worse.
  auto findings = check(topology_);
  for (auto& f : compare_views(survey.views))
    findings.push_back(std::move(f));
  for (const auto& f : findings) {
    if (f.kind == FindingKind::kNodeLoading) {
      warnings_.push_back(f.message);
      continue;
    }
    return fail("the cluster is not clean (" + std::string(finding_kind_name(f.kind)) + ": " + f.message +
                "); run slotshift check, fix it, then move");
  }

  // The target: an id, a unique id prefix, or an address.
  const Node* target = nullptr;
  if (const auto hp = parse_host_port(options_.to, error)) {
    for (const auto& n : topology_.nodes)
      if (n.port == hp->port && (n.address() == hp->host || n.ip == hp->host)) target = &n;
  } else {
    for (const auto& n : topology_.nodes) {
      if (!n.id.starts_with(options_.to) || options_.to.size() < 4) continue;
      if (target) return fail("--to " + options_.to + " names more than one node");
      target = &n;
    }
  }
  if (!target) return fail("--to " + options_.to + " is not a node of this cluster");
  if (!target->is_master())
    return fail("--to " + options_.to + " is a replica (of " + short_id(target->master_id) +
                "); slots can only move to a master");
  target_ = *target;
  target_address_ = HostPort{target_.address(), target_.port};

  // Group the slots by their owner.
  std::map<std::string, std::vector<Slot>> by_owner;
  for (const Slot s : slots) {
    const Node* owner = topology_.owner(s);
    if (!owner) return fail("slot " + std::to_string(s) + " has no owner");
    if (owner->id == target_.id)
      skipped_.push_back(s);
    else
      by_owner[owner->id].push_back(s);
  }
  for (auto& [id, owned] : by_owner) {
    Source src;
    src.node = *topology_.find(id);
    src.address = HostPort{src.node.address(), src.node.port};
    src.slots = std::move(owned);
    sources_.push_back(std::move(src));
  }

  // Versions: the target must read the sources' values, and the cutover depends on the source's version.
  auto server = [&](NodeClient& c, ServerInfo& info) {
    auto r = c.command({"INFO", "server"});
    if (!r || r->is_error()) return fail(c.node().str() + ": INFO server: " + (r ? r->str : c.error()));
    std::string why;
    if (!parse_server_info(r->str, info, why)) return fail(c.node().str() + ": " + why);
    // A node that does not consider the cluster up answers CLUSTERDOWN to the copy's writes (or to clients).
    auto state = c.command({"CLUSTER", "INFO"});
    if (!state || state->is_error())
      return fail(c.node().str() + ": CLUSTER INFO: " + (state ? state->str : c.error()));
    if (const auto s = info_field(state->str, "cluster_state"); s != "ok")
      return fail(c.node().str() + " reports cluster_state:" + std::string(s) +
                  " (a node that has just joined takes a moment to see the cluster up); nothing was touched");
    return true;
  };
  if (!target_control_.connect(target_address_, options_.common.timeout, options_.common.credentials))
    return fail("cannot connect to the target " + target_control_.error());
  if (!server(target_control_, target_info_)) return false;
  if (auto t = target_control_.command({"CONFIG", "GET", "cluster-node-timeout"});
      t && !t->is_error() && t->elements.size() == 2)
    node_timeout_ = milliseconds(std::strtoll(t->elements[1].str.c_str(), nullptr, 10));
  if (native_) {
    if (!has_native_migration(target_info_))
      return fail("--engine native needs Valkey 9.0 or later (CLUSTER MIGRATESLOTS); the target " +
                  target_address_.str() + " runs " + target_info_.name() +
                  ". The default engine works there");
    // One migration into a target at a time: an import still running there (another move, or someone's
    // MIGRATESLOTS) would queue ours behind it or be mixed with it.
    auto jobs = target_control_.command({"CLUSTER", "GETSLOTMIGRATIONS"});
    if (!jobs || jobs->is_error())
      return fail("CLUSTER GETSLOTMIGRATIONS on the target: " + (jobs ? jobs->str : target_control_.error()));
    for (const auto& job : parse_slot_migrations(*jobs))
      if (!job.finished())
        return fail("the target " + target_address_.str() + " is already " +
                    (job.operation == "IMPORT" ? "importing" : "exporting") + " slots " + job.slot_ranges +
                    " (migration " + job.name.substr(0, 8) + ", " + job.state +
                    "); wait for it or cancel it (CLUSTER CANCELSLOTMIGRATIONS on its source)");
  }
  for (auto& src : sources_) {
    auto* c = control(src.node);
    if (!c) return fail("cannot connect to the source " + connect_error_);
    if (!server(*c, src.info)) return false;
    std::string why;
    if (native_) {
      if (!has_native_migration(src.info))
        return fail("--engine native needs Valkey 9.0 or later on every source; " + src.address.str() +
                    " runs " + src.info.name() + ". The default engine works there");
      continue;  // the servers carry the values and fence the handoff themselves
    }
    if (!payloads_compatible(src.info, target_info_, why))
      return fail("cannot move from " + src.address.str() + ": " + why);
    // What the source's replica-count check is now: the cutover raises it around every claim (see
    // cut_over()), and puts it back.
    const bool refuses = !src.info.survives_paused_claim() && options_.fence != "proxy";
    auto config = c->command({"CONFIG", "GET", "min-replicas-*"});
    if (refuses && (!config || config->is_error()))
      return fail(src.address.str() + " runs " + src.info.name() +
                  ", which crashes if it learns a claim while its writes are paused, so slotshift fences it "
                  "by raising min-replicas-to-write for the claim; but CONFIG GET is refused (" +
                  (config ? config->str : c->error()) +
                  "). With every client behind slotshift-proxy, --fence proxy needs no CONFIG");
    for (std::size_t i = 0; config && !config->is_error() && i + 1 < config->elements.size(); i += 2) {
      if (config->elements[i].str == "min-replicas-to-write")
        src.min_replicas_to_write = config->elements[i + 1].str;
      if (config->elements[i].str == "min-replicas-max-lag")
        src.min_replicas_max_lag = config->elements[i + 1].str;
    }
    if (src.min_replicas_to_write == kRefuseAllWrites)
      return fail(
          src.address.str() + " refuses every write (min-replicas-to-write " + kRefuseAllWrites +
          "): a slotshift move was killed during a cutover there. Its journal's last \"refuse-writes\" "
          "step says what to restore (`CONFIG SET min-replicas-to-write 0` is the server's default)");
    src.can_refuse = !src.min_replicas_to_write.empty() && !src.min_replicas_max_lag.empty();
    if (refuses && !src.can_refuse)
      return fail(src.address.str() + ": CONFIG GET min-replicas-* did not name both settings");

    if (refuses)
      warnings_.push_back(
          src.info.name() + " on " + src.address.str() +
          " crashes if it learns a claim while paused: around each claim its pause gives way to a few "
          "milliseconds of refused writes (NOREPLICAS; nothing is applied, slotshift-proxy retries them)");
  }

  // Function libraries live on each node, not in slots: a library the source has and the target lacks makes
  // FCALLs of the moved keys fail after the move. Say so (FUNCTION DUMP / RESTORE copies them).
  auto libraries = [](NodeClient& c) {
    std::set<std::string> names;
    auto r = c.command({"FUNCTION", "LIST"});
    if (r && !r->is_error())
      for (const auto& lib : r->elements)
        if (const auto* name = lib.find("library_name")) names.insert(name->str);
    return names;
  };
  const auto target_libraries = libraries(target_control_);
  for (auto& src : sources_)
    for (const auto& name : libraries(*control(src.node)))
      if (!target_libraries.count(name))
        warnings_.push_back("function library '" + name + "' is on the source " + src.address.str() +
                            " but not on the target: FCALLs of the moved keys will fail there until it is "
                            "loaded (FUNCTION DUMP on the source, FUNCTION RESTORE on the target)");

  // The target must hold nothing of the moving slots: whatever it holds would be mixed with the copy.
  std::vector<Slot> all;
  for (const auto& src : sources_)
    all.insert(all.end(), src.slots.begin(), src.slots.end());
  if (!all.empty()) {
    const auto held = count_keys(target_control_, all);
    if (!held) return fail(target_control_.error());
    for (std::size_t i = 0; i < all.size(); ++i)
      if ((*held)[i] > 0)
        return fail("the target " + target_address_.str() + " already holds " + std::to_string((*held)[i]) +
                    " keys of slot " + std::to_string(all[i]) +
                    ", which it does not own; slotshift does not mix them with the moved keys. Delete them "
                    "first (CLUSTER GETKEYSINSLOT on the target)");
  }
  return true;
}

bool MoveJob::estimate() {
  for (auto& src : sources_) {
    auto* c = control(src.node);
    const auto keys = count_keys(*c, src.slots);
    if (!keys) return fail(c->error());
    for (const auto n : *keys)
      src.estimated_keys += n;
    auto mem = c->command({"INFO", "memory"});
    auto dbsize = c->command({"DBSIZE"});
    if (mem && !mem->is_error() && dbsize && dbsize->integer > 0) {
      const auto dataset = info_integer(mem->str, "used_memory_dataset");
      if (dataset > 0)
        src.estimated_bytes = static_cast<std::uint64_t>(static_cast<double>(dataset) *
                                                         static_cast<double>(src.estimated_keys) /
                                                         static_cast<double>(dbsize->integer));
    }
  }
  return true;
}

void MoveJob::print_plan() {
  std::uint64_t keys = 0, bytes = 0, batches = 0;
  nlohmann::json plan = nlohmann::json::array();
  const double batch_keys =
      std::max(500.0, (static_cast<double>(options_.max_pause.count()) * 0.7 - pause_fixed_ms_) * 1000 /
                          pause_us_per_key_);
  for (const auto& src : sources_) {
    keys += src.estimated_keys;
    bytes += src.estimated_bytes;
    const auto n = std::max<std::uint64_t>(
        1, static_cast<std::uint64_t>(static_cast<double>(src.estimated_keys) / batch_keys) + 1);
    batches += n;
    plan.push_back({{"source", src.address.str()},
                    {"source_id", src.node.id},
                    {"server", src.info.name()},
                    {"slots", format_slot_ranges(slot_ranges(src.slots))},
                    {"slot_count", src.slots.size()},
                    {"keys", src.estimated_keys},
                    {"bytes_estimated", src.estimated_bytes},
                    {"batches_estimated", n}});
  }
  // RESTORE of small keys runs at about 300,000 keys/s on one Redis 7.0 core (ANCHORS.md); a snapshot takes a
  // fork and a write first.
  const double seconds = 0.5 + static_cast<double>(keys) / 300000.0 + static_cast<double>(batches) * 0.1;
  if (options_.common.json) {
    nlohmann::json j{{"dry_run", true},
                     {"target", target_address_.str()},
                     {"target_id", target_.id},
                     {"target_server", target_info_.name()},
                     {"sources", plan},
                     {"already_on_target", format_slot_ranges(slot_ranges(skipped_))},
                     {"keys", keys},
                     {"bytes_estimated", bytes},
                     {"batches_estimated", batches},
                     {"seconds_estimated", seconds},
                     {"warnings", warnings_}};
    out_ << j.dump(2) << "\n";
    return;
  }
  out_ << "plan: move to " << short_id(target_.id) << " " << target_address_.str() << " ("
       << target_info_.name() << ")\n";
  for (const auto& p : plan)
    out_ << "  from " << p["source"].get<std::string>() << " (" << p["server"].get<std::string>()
         << "): " << p["slot_count"] << " slots " << p["slots"].get<std::string>() << ", "
         << with_commas(p["keys"].get<std::uint64_t>()) << " keys, about "
         << human_bytes(static_cast<double>(p["bytes_estimated"].get<std::uint64_t>())) << ", about "
         << p["batches_estimated"] << " batch(es)\n";
  if (!skipped_.empty())
    out_ << "  already on the target: " << format_slot_ranges(slot_ranges(skipped_)) << "\n";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f", seconds);
  out_ << "  " << with_commas(keys) << " keys, about " << human_bytes(static_cast<double>(bytes))
       << ", about " << buf << " s, pauses of at most " << options_.max_pause.count() << " ms per batch\n";
  for (const auto& w : warnings_)
    out_ << "  warning: " << w << "\n";
}

bool MoveJob::prepare() {
  // IMPORTING on the target only. The source is not touched: it keeps serving every key of these slots and
  // never answers ASK, so clients see nothing of the copy.
  std::vector<std::vector<std::string>> cmds;
  std::vector<Slot> slots;
  for (const auto& src : sources_)
    for (const Slot s : src.slots) {
      cmds.push_back({"CLUSTER", "SETSLOT", std::to_string(s), "IMPORTING", src.node.id});
      slots.push_back(s);
    }
  journal({{"step", "importing"}, {"target", target_.id}, {"slots", format_slot_ranges(slot_ranges(slots))}});
  std::vector<std::vector<std::vector<std::string>>> groups;
  for (auto& c : cmds)
    groups.push_back({std::move(c)});
  // Marked first: if the run fails half way, rollback() clears whatever did get IMPORTING.
  for (const Slot s : slots)
    importing_[s] = true;
  if (const auto error = setslots(groups)) return fail("on the target: " + *error);
  // Keys the target's replicas hold in these slots are left over from an earlier move off a Redis 7.0 master
  // (see purge_replica_keys); they would outlive the copy on the replicas. Remove them first.
  std::uint64_t purged = 0;
  if (!purge_replica_keys(target_, "", slots, false, purged)) return false;
  if (purged > 0)
    notes_.push_back(
        "removed " + std::to_string(purged) +
        " stale keys of the moving slots from the target's replicas, left over from an earlier move");
  return true;
}

bool MoveJob::copy() {
  for (auto& src : sources_) {
    CopierOptions o;
    o.source = src.address;
    o.target = target_address_;
    o.credentials = options_.common.credentials;
    o.diskless = options_.diskless;
    if (src.info.flavor == ServerInfo::Flavor::kValkey) o.announce_version = src.info.version;
    o.big_key = options_.big_key;
    o.spool_memory = options_.spool_memory;
    o.spool_dir = options_.spool_dir;
    o.timeout = options_.common.timeout;
    src.copier = std::make_unique<SlotCopier>(o, src.slots);
    journal({{"step", "copy"}, {"source", src.node.id}});
    if (!src.copier->start()) return fail(src.copier->error());
  }
  const auto t0 = Clock::now();
  for (;;) {
    bool done = true;
    std::uint64_t keys = 0, bytes = 0, rdb = 0, estimated = 0;
    for (auto& src : sources_) {
      if (src.copier->failed()) return fail(copier_failure(src));
      const auto& st = src.copier->stats();
      done &= st.rdb_done.load();
      keys += st.keys_copied.load();
      bytes += st.bytes_copied.load();
      rdb += st.rdb_bytes.load();
      estimated += src.estimated_keys;
    }
    if (interrupted()) return false;
    if (done) break;
    char line[200];
    std::snprintf(line, sizeof line, "copy  %s/%s keys  %s of values  %s of snapshots read  %.1f s",
                  with_commas(keys).c_str(), with_commas(estimated).c_str(),
                  human_bytes(static_cast<double>(bytes)).c_str(),
                  human_bytes(static_cast<double>(rdb)).c_str(), ms_since(t0) / 1000);
    progress(line);
    std::this_thread::sleep_for(milliseconds(100));
  }
  copy_s_ = ms_since(t0) / 1000;
  journal({{"step", "copied"}});
  return true;
}

double MoveJob::predicted_pause_ms(std::uint64_t keys, std::size_t slots) const {
  return pause_fixed_ms_ + claim_floor_ms_ +
         (static_cast<double>(keys) * pause_us_per_key_ + static_cast<double>(slots) * pause_us_per_slot_) /
             1000;
}

bool MoveJob::fits(std::uint64_t keys, std::size_t slots) const {
  // Aim at 70% of the budget, so that a batch a little slower than predicted still fits. Until the first
  // batch has been measured, batches stay small. When the part no batch size changes (the source's own
  // delay in learning a claim: tens of ms on Valkey 9.1) already takes most of the budget, smaller batches
  // would only mean more stalls of the same length: the part that grows with the batch then gets 30%.
  if (!calibrated_ && (keys > 5000 || slots > 500)) return false;
  const double budget = static_cast<double>(options_.max_pause.count());
  const double floor = pause_fixed_ms_ + claim_floor_ms_;
  return predicted_pause_ms(keys, slots) - floor <= std::max(budget * 0.7 - floor, budget * 0.3);
}

// What a batch cost the source's clients: the pause (and the refusal of writes that follows it on servers
// that cannot stay paused through a claim), or with --fence proxy (no pause) the source's own stall while it
// deletes the batch's keys on learning the claim (claim_ms ends when it answers again).
double MoveJob::stall_ms(const Batch& batch) const {
  return options_.fence == "proxy" ? batch.claim_ms : batch.pause_ms + batch.refuse_ms;
}

void MoveJob::learn_pause(const Batch& batch) {
  const double stall = stall_ms(batch);
  pause_fixed_ms_ = std::min(pause_fixed_ms_, std::max(0.5, stall - batch.claim_ms));
  // The least time any batch's source took to learn its claim once it was sent: a floor no batch size
  // changes.
  const double learn = std::max(0.0, batch.claim_ms - batch.claim_send_ms);
  claim_floor_ms_ = claim_floor_known_ ? std::min(claim_floor_ms_, learn) : learn;
  claim_floor_known_ = true;
  if (pause_fixed_ms_ + claim_floor_ms_ > static_cast<double>(options_.max_pause.count()) && !floor_warned_) {
    floor_warned_ = true;
    char text[32];
    std::snprintf(text, sizeof text, "%.0f ms", pause_fixed_ms_ + claim_floor_ms_);
    warnings_.push_back(
        "a cutover of the source " + batch_source_ + " takes at least " + text +
        " whatever the batch (most of it the source learning the claim): its stalls cannot stay "
        "under --max-pause " +
        std::to_string(options_.max_pause.count()) + " ms");
  }
  if (batch.slots.size() >= 50)
    pause_us_per_slot_ = std::max(pause_us_per_slot_ / 2,
                                  batch.claim_send_ms * 1000 / static_cast<double>(batch.slots.size()));
  if (batch.source_keys < 1000) return;
  const double rest = stall - pause_fixed_ms_ - claim_floor_ms_ -
                      static_cast<double>(batch.slots.size()) * pause_us_per_slot_ / 1000;
  const double sample = std::max(0.05, rest * 1000 / static_cast<double>(batch.source_keys));
  // A slower sample counts fully at once (the budget is a promise); a faster one half.
  pause_us_per_key_ = sample > pause_us_per_key_ ? sample : (pause_us_per_key_ + sample) / 2;
  calibrated_ = true;
}

std::vector<Batch> MoveJob::plan_batches(const Source& src) const {
  // Batches of consecutive slots not yet claimed, each small enough that the source's delete of its keys at
  // the claim fits in the pause budget. Keys and bytes per slot come from the snapshot.
  std::vector<Batch> batches;
  const std::uint64_t max_bytes = 256ull << 20;
  Batch current;
  for (const Slot s : src.slots) {
    if (claimed_[s]) continue;
    const auto keys = src.copier->slot_keys(s), bytes = src.copier->slot_bytes(s);
    if (!current.slots.empty() &&
        (!fits(current.keys + keys, current.slots.size() + 1) || current.bytes + bytes > max_bytes)) {
      batches.push_back(std::move(current));
      current = Batch{};
    }
    current.slots.push_back(s);
    current.keys += keys;
    current.bytes += bytes;
  }
  if (!current.slots.empty()) batches.push_back(std::move(current));
  return batches;
}

bool MoveJob::unpause(Source& src) {
  bool ok = true;
  auto* c = control(src.node);
  // The refusal goes first: the writes the pause held run the moment it ends, and must not meet it.
  if (src.refusing && !src.keep_refusing) {
    const std::vector<std::string> restore = {"CONFIG",
                                              "SET",
                                              "min-replicas-to-write",
                                              src.min_replicas_to_write,
                                              "min-replicas-max-lag",
                                              src.min_replicas_max_lag};
    auto r = c ? c->command(restore) : std::nullopt;
    if (!r || r->is_error()) {
      warnings_.push_back("restoring min-replicas-to-write on " + src.address.str() + " failed (" +
                          (r ? r->str : "no connection") + "): it refuses every write until `" +
                          join(restore) + "` is sent to it");
      ok = false;
    } else {
      src.refusing = false;
    }
  }
  if (src.paused) {
    auto r = c ? c->command({"CLIENT", "UNPAUSE"}) : std::nullopt;
    if (!r || r->is_error()) {
      warnings_.push_back("CLIENT UNPAUSE on " + src.address.str() + " failed (" +
                          (r ? r->str : "no connection") + "); its pause ends by itself within " +
                          std::to_string(options_.pause_timeout.count()) + " ms");
      ok = false;
    }
    src.paused = false;
  }
  return ok;
}

// The fence of a source that cannot stay paused while it learns a claim (Redis 7.2 to 8.x, Valkey 8.0): it
// refuses writes with NOREPLICAS (nothing is applied, the client may retry) from just before the claim until
// it has learnt it; then it answers MOVED for the moved slots. Redirection is checked before the replica
// count, so moved slots get MOVED even while it still refuses.
bool MoveJob::refuse_writes(Source& src) {
  auto* c = control(src.node);
  if (!c || !src.can_refuse) {
    connect_error_ = c ? "CONFIG GET min-replicas-* was refused at the start" : connect_error_;
    return false;
  }
  journal({{"step", "refuse-writes"},
           {"source", src.node.id},
           {"restore",
            {"CONFIG", "SET", "min-replicas-to-write", src.min_replicas_to_write, "min-replicas-max-lag",
             src.min_replicas_max_lag}}});
  // A lag of 0 disables the check; any other keeps it on while no replica can be counted good.
  const std::string lag = src.min_replicas_max_lag == "0" ? "10" : src.min_replicas_max_lag;
  src.refusing = true;  // even if the reply is lost, restoring is harmless
  auto r =
      c->command({"CONFIG", "SET", "min-replicas-to-write", kRefuseAllWrites, "min-replicas-max-lag", lag});
  if (!r || r->is_error()) {
    connect_error_ = r ? r->str : c->error();
    return false;
  }
  return true;
}

bool MoveJob::cut_over(Source& src, Batch& batch, bool& retry) {
  retry = false;
  ++batch.attempts;
  auto& copier = *src.copier;
  auto* c = control(src.node);
  if (!c) return fail("cannot connect to the source " + connect_error_);
  const std::string slots_text = format_slot_ranges(slot_ranges(batch.slots));

  // Start the fence only once the target is close behind the source, so that the wait inside it is short.
  const auto settle_deadline = Clock::now() + std::chrono::seconds(30);
  while (copier.lag_bytes() > (256u << 10) || copier.lag_seconds() > 0.05) {
    if (copier.failed()) return fail(copier_failure(src));
    if (interrupted()) return false;
    if (Clock::now() > settle_deadline)
      return fail("the target has stayed " + human_bytes(static_cast<double>(copier.lag_bytes())) +
                  " behind the source " + src.address.str() + " for 30 s; it cannot keep up with the writes");
    std::this_thread::sleep_for(milliseconds(1));
  }

  // Everything before the claim can be undone: the batch goes back to how it was and the move either tries
  // it again or stops.
  bool held = false;
  auto abandon = [&](std::string why, bool may_retry) {
    copier.reopen_slots(batch.slots);
    unpause(src);
    if (held) release_proxies(slots_text);
    if (copier.failed()) return fail(copier_failure(src));
    if (may_retry) {
      retry = true;
      warnings_.push_back("batch " + slots_text + ": " + why + "; the batch was tried again");
      return false;
    }
    return fail(std::move(why));
  };

  const bool fence_proxy = options_.fence == "proxy";
  const bool pause_through_claim = src.info.survives_paused_claim();
  const auto t0 = Clock::now();
  auto t_pause = t0;
  // 1. The proxies hold the batch's slots: their clients' commands for them wait in the proxies from here to
  //    the release, and what was in flight has returned. With --fence proxy that is the whole fence, so every
  //    proxy must hold; otherwise the source's pause fences writes anyway and a proxy that does not answer
  //    only costs its clients a MOVED after the move.
  if (proxies_) {
    // What is in flight normally returns within a millisecond or two; a proxy that needs longer than a few
    // pause budgets to drain is treated as one that does not answer. When the source's pause is the fence,
    // waiting for a proxy only holds the other proxies' clients, so the wait is shorter.
    const auto wait = fence_proxy
                          ? std::clamp(options_.max_pause * 4, milliseconds(100), options_.pause_timeout / 2)
                          : std::clamp(options_.max_pause, milliseconds(20), options_.pause_timeout / 2);
    const auto calls = proxies_->hold(slots_text, options_.pause_timeout, wait, owner_);
    held = true;
    batch.proxies_held = 0;
    for (const auto& call : calls.calls)
      batch.proxies_held += call.ok;
    if (!calls.all_ok()) {
      const auto failed = join(calls.failures(), "; ");
      if (fence_proxy)
        return abandon("--fence proxy: not every proxy held batch " + slots_text + ": " + failed, false);
      note_proxy_failures(calls);
      for (const auto& call : calls.calls)
        if (!call.ok) proxies_->forget(call.proxy);
    }
  }
  // 2. The source's writes pause (unless the proxies are the fence), and its offset at that moment is where
  //    the target must be before the claim.
  if (!fence_proxy) {
    auto pause = c->command({"CLIENT", "PAUSE", std::to_string(options_.pause_timeout.count()), "WRITE"});
    if (!pause || pause->is_error())
      return abandon(
          "CLIENT PAUSE on the source " + src.address.str() + ": " + (pause ? pause->str : c->error()),
          !pause);  // a source that stalled or dropped the connection may answer the next time
    src.paused = true;
    t_pause = Clock::now();
  }
  auto info = c->command({"INFO", "replication"});
  const std::int64_t fence = info && !info->is_error() ? info_integer(info->str, "master_repl_offset") : -1;
  if (fence < 0)
    return abandon("INFO replication on the source " + src.address.str() + ": " +
                       (info ? "no master_repl_offset" : c->error()),
                   !info);
  if (auto changed = source_changed(src, info->str)) return abandon(*changed, false);
  journal({{"step", "fence"},
           {"source", src.node.id},
           {"slots", slots_text},
           {"offset", fence},
           {"paused", src.paused},
           {"proxies_held", held ? owner_ : ""}});
  // From here the copier applies nothing of these slots past the fence: the source's writes are paused, and
  // after the claim it answers MOVED for them. (Where the pause gives way to refused writes before the claim,
  // the fence moves there, and the writes run in between are applied.)
  // The pause ends by itself after --pause-timeout, so that a dead slotshift cannot freeze the source. A
  // source that stalls (a slow disk, a swap storm, SIGSTOP) for longer than that just as it is to learn the
  // claim would wake up unpaused, and could run writes for the claimed slots before it reads the target's
  // broadcast, then delete them with the slots. So for the claim the pause is made twice as long
  // (claim_pause(); renewed while slotshift waits for the source to learn), and a source that has not learnt
  // by the deadline is left refusing writes (wait_source_learns()). (Raising min-replicas-to-write for every
  // claim instead would not lapse, but the server checks it before the pause: every client would meet
  // NOREPLICAS for the whole claim.) On servers that crash when they learn a claim while paused, the pause
  // gives way to that refusal before the claim.
  const bool refuse_for_claim = !pause_through_claim && !fence_proxy;
  if (!refuse_for_claim) copier.close_slots(batch.slots, fence);
  const auto t_wait = Clock::now();
  if (!copier.wait_applied(fence, t_pause + options_.pause_timeout / 2))
    return abandon("the target did not reach the source's offset within " +
                       std::to_string(options_.pause_timeout.count() / 2) + " ms",
                   true);
  batch.wait_ms = ms_since(t_wait);

  // 3. Both sides now hold the same data for these slots: compare the key counts before anything changes
  //    owner. Keys that expired in between are the only possible difference: the target, a master, expires
  //    keys on its own, so it may hold fewer. A paused source expires nothing, but with --fence proxy it is
  //    not paused and goes on expiring keys after the offset was read (their DELs lie past the fence), so the
  //    target may then hold more too.
  // (A connection that failed here, a node that stalled past the timeout, is made again for the next try.)
  c = control(src.node);
  if (!c) return abandon("cannot connect to the source " + connect_error_, true);
  if (!target_control_.usable() &&
      !target_control_.connect(target_address_, options_.common.timeout, options_.common.credentials))
    return abandon("cannot connect to the target " + target_control_.error(), true);
  const auto on_source = count_keys(*c, batch.slots);
  const auto on_target = count_keys(target_control_, batch.slots);
  if (!on_source || !on_target)
    return abandon("counting the keys of batch " + slots_text + ": " +
                       (on_source ? target_control_.error() : c->error()),
                   true);
  batch.source_keys = batch.target_keys = 0;
  for (std::size_t i = 0; i < batch.slots.size(); ++i) {
    const auto a = (*on_source)[i], b = (*on_target)[i];
    batch.source_keys += a;
    batch.target_keys += b;
    const auto expiring = copier.slot_expiring(batch.slots[i]);
    const bool too_many = b > a && (src.paused || b - a > expiring);
    if (too_many || (a > b && a - b > expiring))
      return abandon(
          "slot " + std::to_string(batch.slots[i]) + ": the source holds " + std::to_string(a) +
              " keys and the target " + std::to_string(b) + " at the same offset (at most " +
              std::to_string(expiring) + " may differ by expiry); nothing was claimed, the move is undone" +
              (fence_proxy ? " (with --fence proxy, does a client write to the source directly?)" : ""),
          false);
  }

  // The fence lasts as long as the hold's ttl and the pause's timeout (they end by themselves so that a dead
  // slotshift cannot freeze clients). If this process was held up for most of that, the fence may be gone
  // by the time the claim lands: give the batch up and take it again.
  if (Clock::now() - t0 > options_.pause_timeout * 3 / 4)
    return abandon("the fence had been up for " + std::to_string(static_cast<long>(ms_since(t0))) +
                       " ms of its " + std::to_string(options_.pause_timeout.count()) +
                       " ms before the claim",
                   true);
  // 4. The claim. Servers that crash when they learn it while paused are unpaused and refuse writes instead
  //    (NOREPLICAS: not applied, the client may retry) until they know the new owner. What they accepted
  //    between the end of the pause and the refusal is applied to the target before the claim.
  std::int64_t claim_offset = fence;
  auto t_refuse = t0;
  if (refuse_for_claim) {
    // The queued writes run as the pause ends, before the server reads its next command from us.
    if (!unpause(src)) return abandon("CLIENT UNPAUSE on the source failed", false);
    t_refuse = Clock::now();
    if (!refuse_writes(src))
      return abandon("cannot make the source " + src.address.str() + " refuse writes for the claim (" +
                         connect_error_ +
                         "); with every client behind slotshift-proxy, --fence proxy needs "
                         "no CONFIG",
                     false);
    c = control(src.node);  // refuse_writes() may have replaced a failed connection
    info = c ? c->command({"INFO", "replication"}) : std::nullopt;
    claim_offset = info && !info->is_error() ? info_integer(info->str, "master_repl_offset") : -1;
    if (claim_offset < 0)
      return abandon("INFO replication on the source " + src.address.str() + ": no master_repl_offset",
                     false);
    copier.close_slots(batch.slots, claim_offset);
    if (!copier.wait_applied(claim_offset, t_refuse + options_.pause_timeout / 2))
      return abandon("the target did not reach the source's offset within " +
                         std::to_string(options_.pause_timeout.count() / 2) + " ms",
                     true);
  } else if (!pause_through_claim) {
    unpause(src);  // --fence proxy: the proxies hold; nothing of the source is paused anyway
  } else if (src.paused) {
    // Long enough to outlast the wait for the source to learn (renewed there); see above.
    c = control(src.node);
    auto longer =
        c ? c->command({"CLIENT", "PAUSE", std::to_string(claim_pause().count()), "WRITE"}) : std::nullopt;
    if (!longer || longer->is_error())
      return abandon("CLIENT PAUSE on the source " + src.address.str() +
                         " for the claim: " + (longer ? longer->str : connect_error_),
                     false);
  }
  // The last look at the source before the claim: a failover since the fence would make the claim hand the
  // target slots whose newer writes went to the new master.
  c = control(src.node);
  info = c ? c->command({"INFO", "replication"}) : std::nullopt;
  if (!info || info->is_error())
    return abandon("INFO replication on the source " + src.address.str() +
                       " before the claim: " + (info ? info->str : connect_error_),
                   !info);
  if (auto changed = source_changed(src, info->str)) return abandon(*changed, false);
  if (auto lagging = target_replicas_behind(batch, Clock::now() + options_.pause_timeout / 4))
    return abandon(*lagging, true);
  journal({{"step", "claim"},
           {"source", src.node.id},
           {"slots", slots_text},
           {"offset", claim_offset},
           {"replid", src.copier->replid()}});
  // As one broadcast. `SETSLOT s NODE target` on a target that has s in IMPORTING bumps its config epoch (if
  // it is not already the unique maximum) and broadcasts a PONG to every node, once per slot: for a batch of
  // a thousand slots that is a thousand broadcasts, and the source spends a fifth of a millisecond on each
  // (measured on 7.0.15). So: BUMPEPOCH first, which makes the target's epoch the unique maximum; then, for
  // every slot but the last, STABLE + NODE, which only changes the target's own table (any gossip it sends
  // meanwhile already carries the winning epoch); then NODE for the last slot, still IMPORTING, whose one
  // broadcast carries the whole batch.
  // (Each slot's STABLE + NODE is one group for setslots(): in order on one connection.)
  std::vector<std::vector<std::vector<std::string>>> pairs;
  for (std::size_t i = 0; i + 1 < batch.slots.size(); ++i)
    pairs.push_back({{"CLUSTER", "SETSLOT", std::to_string(batch.slots[i]), "STABLE"},
                     {"CLUSTER", "SETSLOT", std::to_string(batch.slots[i]), "NODE", target_.id}});
  if (fault::armed("claim", "drop-setslot-connections")) drop_setslot_connections();
  const auto t_claim = Clock::now();
  // Past this point nothing is undone: some or all of the slots may belong to the target now.
  std::string claim_error;
  auto bump = target_control_.command({"CLUSTER", "BUMPEPOCH"});
  if (!bump || bump->is_error()) {
    claim_error = "CLUSTER BUMPEPOCH: " + (bump ? bump->str : target_control_.error());
  } else if (const auto error = setslots(pairs)) {
    claim_error = *error;
  } else {
    auto last = target_control_.command(
        {"CLUSTER", "SETSLOT", std::to_string(batch.slots.back()), "NODE", target_.id});
    if (!last || last->is_error())
      claim_error = "CLUSTER SETSLOT " + std::to_string(batch.slots.back()) +
                    " NODE: " + (last ? last->str : target_control_.error());
  }
  batch.claim_send_ms = ms_since(t_claim);
  if (!claim_error.empty()) return settle_claim(src, batch, claim_error, held);
  for (const Slot s : batch.slots) {
    claimed_[s] = true;
    importing_[s] = false;
  }
  // 5. The target owns the slots: the proxies send what they held there, and never meet a MOVED for them.
  //    Meanwhile (not after: a slow proxy must not keep the source paused) the source learns the claim.
  std::future<void> proxies_done;
  if (proxies_)
    proxies_done = std::async(std::launch::async, [&] {
      route_and_release(slots_text);
      batch.hold_ms = ms_since(t0);
    });
  // 6. The source deletes its keys of these slots as soon as it hears the target's broadcast (synchronously:
  //    that delete is most of the pause) and answers MOVED from then on. Wait for it, fenced, then unpause.
  if (!wait_source_learns(src, batch.slots)) {
    if (proxies_done.valid()) proxies_done.get();
    return fail("the source " + src.address.str() + " did not learn the claim of batch " + slots_text +
                " within " + std::to_string(learn_timeout().count()) + " ms; " + fence_left(src));
  }
  batch.claim_ms = ms_since(t_claim);
  if (proxies_done.valid()) proxies_done.get();
  if (src.paused) {
    unpause(src);
    batch.pause_ms = ms_since(t_pause);
  } else if (refuse_for_claim) {
    batch.pause_ms = std::chrono::duration<double, std::milli>(t_refuse - t_pause).count();
    unpause(src);
    batch.refuse_ms = ms_since(t_refuse);
  } else if (!fence_proxy) {
    batch.pause_ms = std::chrono::duration<double, std::milli>(t_claim - t_pause).count();
  }
  journal({{"step", "claimed"}, {"slots", slots_text}, {"pause_ms", batch.pause_ms}});
  batch_source_ = src.address.str();
  learn_pause(batch);
  return true;
}

// Why the source is no longer the master slotshift copies from, or nothing. A failover (a replica promoted,
// by TAKEOVER too) gives the promoted node a new replication id and turns the old master into its replica,
// whose master_replid becomes the new one: either way INFO replication no longer shows this role and id.
std::optional<std::string> MoveJob::source_changed(const Source& src, const std::string& info) const {
  const auto role = info_field(info, "role");
  const auto replid = info_field(info, "master_replid");
  if (role == "master" && (replid == src.copier->replid() || src.copier->replid().empty()))
    return std::nullopt;
  return "the source " + src.address.str() + " is no longer the master slotshift copies from (role " +
         std::string(role) + ", replication id " + std::string(replid) + " where the copy began with " +
         src.copier->replid() + "): a failover? No batch is claimed on what was copied from it";
}

// Waits until every replica of the target has what the target has now, or the deadline passes (then says
// so). After the claim the target's copy of the batch is the only one: if the target failed over to a replica
// that lacks part of it, that part would be gone. A replica that the cluster flags as failed is not waited
// for (it cannot be promoted).
//
// WAIT counts the replicas that have acknowledged the offset of this connection's last write, and asks them
// at once (REPLCONF GETACK) rather than at their next ACK a second later. The control connection writes
// nothing, so it first writes and removes a key of the batch's first slot in one script call (reached by
// ASKING, as the slot is in IMPORTING): a write whose offset is past every key the copy wrote, and which
// leaves nothing.
std::optional<std::string> MoveJob::target_replicas_behind(const Batch& batch, Clock::time_point deadline) {
  std::size_t replicas = 0;
  for (const auto* r : topology_.replicas_of(target_.id))
    replicas += !r->flags || !r->flags->fail;
  if (replicas == 0) return std::nullopt;
  std::string key;
  for (int i = 0; key.empty(); ++i)
    if (key_slot("slotshift:ack:" + std::to_string(i)) == batch.slots.front())
      key = "slotshift:ack:" + std::to_string(i);
  static const std::string kSetDel = "redis.call('SET', KEYS[1], '') return redis.call('DEL', KEYS[1])";
  const auto wait_ms = std::max<long>(1, duration_cast<milliseconds>(deadline - Clock::now()).count());
  const auto replies = target_control_.pipeline(
      {{"ASKING"}, {"EVAL", kSetDel, "1", key}, {"WAIT", std::to_string(replicas), std::to_string(wait_ms)}});
  if (!replies) return "the target's replicas: " + target_control_.error();
  for (const auto& r : *replies)
    if (r.is_error()) return "the target's replicas: " + r.str;
  const auto acked = replies->back().integer;
  if (acked >= static_cast<std::int64_t>(replicas)) return std::nullopt;
  return std::to_string(acked) + " of the target's " + std::to_string(replicas) +
         " replicas had the batch within " + std::to_string(wait_ms) +
         " ms; nothing is claimed before every replica of the target has it";
}

// Why a source's copier stopped, as the nodes tell it: a replica link that the source closed is most often a
// failover (a master that becomes a replica drops its own replicas), and then that is what the user is told.
std::string MoveJob::copier_failure(Source& src) {
  auto* c = control(src.node);
  const auto info = c ? c->command({"INFO", "replication"}) : std::nullopt;
  if (info && !info->is_error())
    if (auto changed = source_changed(src, info->str)) return *changed + " (" + src.copier->error() + ")";
  return src.copier->error();
}

// How long a source's pause lasts from a claim on (and is renewed to while slotshift waits for it to learn):
// twice --pause-timeout. It outlasts a stall of the source of up to that much at the claim, and a slotshift
// killed right then still holds the source's writes for no longer than that: clients behind the proxies wait
// it out within their request deadline (5 s by default against a 4 s pause).
std::chrono::milliseconds MoveJob::claim_pause() const {
  return options_.pause_timeout * 2;
}

std::chrono::milliseconds MoveJob::learn_timeout() const {
  // The source learns a claim from the target's broadcast within milliseconds; after a claim that failed part
  // way there is no broadcast, and it learns from the target's regular pings, which reach every node at least
  // once per half node timeout.
  return std::max(milliseconds(5000), node_timeout_);
}

// What is left of a source's fence after wait_source_learns() gave up, for the user.
std::string MoveJob::fence_left(const Source& src) const {
  if (src.keep_refusing)
    return "so that no write it accepts is lost when it does, it refuses every write (NOREPLICAS) until "
           "`CONFIG "
           "SET min-replicas-to-write " +
           src.min_replicas_to_write + " min-replicas-max-lag " + src.min_replicas_max_lag +
           "` is sent to it: send that once slotshift check shows every node naming the target as their "
           "owner";
  return "slotshift could not fence it (no connection): writes it accepted for those slots after the claim "
         "are lost when it learns; run slotshift check";
}

// Waits until the source names the target as the owner of every slot of `slots`, its fence up all the while.
// The source deletes its keys of a slot when it learns that the target owns it: a write it accepted after the
// fence and before that would be deleted with them, acknowledged and gone. So the fence never lapses here:
// the pause is renewed (a second CLIENT PAUSE only extends it), a refusal of writes stays, and a source that
// has still not learnt at the deadline is left refusing writes (NOREPLICAS: nothing applied), for an operator
// to lift (fence_left()). Servers that crash when they learn a claim while paused are never paused here.
bool MoveJob::wait_source_learns(Source& src, const std::vector<Slot>& slots) {
  const auto deadline = Clock::now() + learn_timeout();
  auto renewed = Clock::now();
  for (;;) {
    auto* c = control(src.node);
    auto nodes = c ? c->command({"CLUSTER", "NODES"}) : std::nullopt;
    if (nodes && !nodes->is_error()) {
      const auto view = parse_cluster_nodes(*nodes);
      if (view.ok() && std::all_of(slots.begin(), slots.end(), [&](Slot s) {
            const Node* o = view.topology.owner(s);
            return o && o->id == target_.id;
          }))
        return true;
    }
    if (src.paused && Clock::now() - renewed > options_.pause_timeout / 4 && c) {
      c->command({"CLIENT", "PAUSE", std::to_string(claim_pause().count()), "WRITE"});
      renewed = Clock::now();
    }
    if (Clock::now() > deadline) break;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  if (src.refusing || refuse_writes(src)) src.keep_refusing = true;
  unpause(src);  // the pause only: the refusal stays
  journal({{"step", "source-not-learnt"},
           {"source", src.node.id},
           {"slots", format_slot_ranges(slot_ranges(slots))},
           {"refusing_writes", src.keep_refusing}});
  return false;
}

// A target's own CLUSTER NODES, asked on a new connection (the one that failed may be the reason we ask),
// again and again until a deadline.
TargetView MoveJob::target_view(const std::vector<Slot>& slots) {
  TargetView v;
  const auto deadline = Clock::now() + std::max(milliseconds(10000), options_.common.timeout * 3);
  for (;;) {
    NodeClient c;
    if (c.connect(target_address_, options_.common.timeout, options_.common.credentials)) {
      const auto nodes = c.command_when_loaded({"CLUSTER", "NODES"}, deadline);
      const auto parsed = nodes && !nodes->is_error() ? parse_cluster_nodes(*nodes) : TopologyResult{};
      const Node* me = parsed.ok() ? parsed.topology.myself() : nullptr;
      if (me && me->id == target_.id) {
        for (const Slot s : slots) {
          const Node* o = parsed.topology.owner(s);
          if (o && o->id == target_.id) {
            v.owned.push_back(s);
          } else {
            v.other.push_back(s);
            if (me->importing.count(s)) v.importing.insert(s);
            if (o)
              v.owner[s] = o->id;
            else
              v.unbound.insert(s);
          }
        }
        v.known = true;
        return v;
      }
      v.error = !nodes ? c.error() : nodes->is_error() ? nodes->str : "its CLUSTER NODES names no myself";
    } else {
      v.error = c.error();
    }
    if (Clock::now() > deadline) return v;
    std::this_thread::sleep_for(milliseconds(100));
  }
}

// A target that failed over during the move is a replica now; its data (the copied keys included) lives on
// in the replica that took its place, which is where they must be removed. Nothing to do when the target is
// still a master or cannot be asked.
void MoveJob::follow_target_failover() {
  NodeClient c;
  if (!c.connect(target_address_, options_.common.timeout, options_.common.credentials)) return;
  const auto nodes = c.command({"CLUSTER", "NODES"});
  const auto view = nodes && !nodes->is_error() ? parse_cluster_nodes(*nodes) : TopologyResult{};
  const Node* me = view.ok() ? view.topology.myself() : nullptr;
  if (!me || me->is_master() || me->master_id.empty()) return;
  const Node* master = view.topology.find(me->master_id);
  if (!master || master->port == 0) return;
  warnings_.push_back("the target " + target_address_.str() + " failed over during the move to " +
                      master->address() + ":" + std::to_string(master->port) + ", which took its place");
  journal({{"step", "target-failed-over"},
           {"from", target_.id},
           {"to", master->id},
           {"to_address", master->address() + ":" + std::to_string(master->port)}});
  target_ = *master;
  target_address_ = HostPort{master->address(), master->port};
  target_control_ = NodeClient{};
  target_fanout_connected_ = false;
}

// A claim that failed part way: some of the batch's SETSLOT ... NODE may have run, and the target owns those
// slots whatever their replies said; the cluster learns it by gossip, and the source then deletes its keys of
// them. So nothing is decided from the error: the target is asked what it owns. Those slots are moved, and
// the source stays fenced until it knows; the others go back to the source (rollback() removes their copies,
// and only theirs). If the target cannot even be asked, nothing is undone and the source refuses writes.
bool MoveJob::settle_claim(Source& src, Batch& batch, const std::string& claim_error, bool held) {
  const std::string slots_text = format_slot_ranges(slot_ranges(batch.slots));
  journal({{"step", "claim-failed"}, {"slots", slots_text}, {"error", claim_error}});
  // Read twice, half a second apart, until both agree: a SETSLOT still on its way through the target (one
  // whose connection timed out on our side) must not change the answer after it was given.
  auto view = target_view(batch.slots);
  for (const auto until = Clock::now() + std::chrono::seconds(10); view.known && Clock::now() < until;) {
    std::this_thread::sleep_for(milliseconds(500));
    auto again = target_view(batch.slots);
    const bool same = again.known && again.owned == view.owned;
    view = std::move(again);
    if (same) break;
  }
  if (!view.known) {
    for (const Slot s : batch.slots)
      importing_[s] = false;  // rollback() must not touch them: they may be the target's
    const bool refused = src.refusing || refuse_writes(src);
    if (refused) src.keep_refusing = true;
    unpause(src);
    if (held) release_proxies(slots_text);
    journal({{"step", "claim-unknown"}, {"slots", slots_text}, {"error", view.error}});
    return fail(
        "claiming batch " + slots_text + " on the target: " + claim_error +
        "; then the target could not be asked which of its slots it owns (" + view.error +
        "). Nothing of the batch was undone, since any of its slots may be the target's now, and " +
        (refused ? "the source " + src.address.str() +
                       " refuses writes so that none is lost: once slotshift check shows one owner for each "
                       "slot, send it `CONFIG SET min-replicas-to-write " +
                       src.min_replicas_to_write + " min-replicas-max-lag " + src.min_replicas_max_lag + "`"
                 : "the source could not be fenced either: run slotshift check"));
  }
  for (const Slot s : view.owned) {
    claimed_[s] = true;
    importing_[s] = false;
  }
  const std::string owned_text = format_slot_ranges(slot_ranges(view.owned));
  const std::string other_text = format_slot_ranges(slot_ranges(view.other));
  journal({{"step", "claim-settled"},
           {"slots", slots_text},
           {"target_owns", owned_text},
           {"source_keeps", other_text}});
  if (held) {
    if (!view.owned.empty()) route_and_release(owned_text);
    if (!view.other.empty()) release_proxies(other_text);
  }
  const bool learnt = view.owned.empty() || wait_source_learns(src, view.owned);
  unpause(src);
  std::string what = "claiming batch " + slots_text + " on the target failed part way (" + claim_error +
                     "). The nodes say: ";
  if (view.owned.empty())
    what += "the target owns none of its slots";
  else
    what += "the target owns " + std::to_string(view.owned.size()) + " of its " +
            std::to_string(batch.slots.size()) + " slots (" + owned_text + "), which are moved" +
            (learnt ? " and the source knows it" : "; the source had not learnt it: " + fence_left(src));
  if (!view.other.empty())
    what += "; the other " + std::to_string(view.other.size()) + " (" + other_text +
            ") stay with the source " + src.address.str();
  return fail(what);
}

// The fault claim:drop-setslot-connections (fault_injection.h): every other SETSLOT connection of the target
// closed by the target itself, as the connections of a restarted load balancer are.
void MoveJob::drop_setslot_connections() {
  auto list = target_control_.command({"CLIENT", "LIST", "TYPE", "normal"});
  if (!list || list->is_error()) return;
  std::istringstream lines(list->str);
  int n = 0;
  for (std::string line; std::getline(lines, line);) {
    if (line.find(" name=slotshift-setslot ") == std::string::npos || n++ % 2) continue;
    const auto id = line.substr(3, line.find(' ') - 3);  // "id=123 addr=..."
    target_control_.command({"CLIENT", "KILL", "ID", id});
  }
}

// CLUSTER SETSLOT commands on the target, each group in order, the groups over many connections at once:
// Valkey 8 and later make each SETSLOT wait until the node's replicas have it (see NodeFanout). The first
// error, or nothing.
std::optional<std::string> MoveJob::setslots(
    const std::vector<std::vector<std::vector<std::string>>>& groups) {
  if (!target_fanout_connected_) {
    if (!target_fanout_.connect(target_address_, options_.common.timeout, options_.common.credentials, 64,
                                "slotshift-setslot"))
      return target_fanout_.error();
    target_fanout_connected_ = true;
  }
  auto replies = target_fanout_.run(groups);
  if (!replies) {
    target_fanout_connected_ = false;
    return target_fanout_.error();
  }
  for (std::size_t g = 0; g < groups.size(); ++g)
    for (std::size_t i = 0; i < groups[g].size(); ++i)
      if ((*replies)[g][i].is_error()) return join(groups[g][i]) + ": " + (*replies)[g][i].str;
  return std::nullopt;
}

void MoveJob::route_and_release(const std::string& slots) {
  const auto routed = proxies_->route(slots, target_address_);
  const auto released = proxies_->release(slots);
  std::lock_guard lock(warnings_mu_);
  note_proxy_failures(routed);
  note_proxy_failures(released);
}

void MoveJob::release_proxies(const std::string& slots) {
  note_proxy_failures(proxies_->release(slots));
}

// A proxy that does not answer is reported once, not once per batch.
void MoveJob::note_proxy_failures(const ProxyCalls& calls) {
  for (const auto& call : calls.calls)
    if (!call.ok && proxy_warned_.insert(call.proxy).second)
      warnings_.push_back("proxy " + call.proxy + " did not answer (" + call.error + ")" +
                          (options_.fence == "proxy"
                               ? ""
                               : "; it was left out from then on: its clients are fenced by the source's "
                                 "pause and meet MOVED after the move"));
}

bool MoveJob::verify(const Batch& batch) {
  // Every node names the target as the owner of every slot of the batch, nothing of it is open, and the
  // target's config epoch is the largest and no other master has it.
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::seconds(10);
  std::string problem;
  for (const auto& node : topology_.nodes) {
    if (node.port == 0 || node.in_handshake()) continue;
    for (;;) {
      problem.clear();
      auto* c = control(node);
      auto nodes = c ? c->command({"CLUSTER", "NODES"}) : std::nullopt;
      const auto view = nodes && !nodes->is_error() ? parse_cluster_nodes(*nodes) : TopologyResult{};
      if (!nodes || nodes->is_error() || !view.ok()) {
        problem = "cannot read CLUSTER NODES";
      } else {
        for (const Slot s : batch.slots) {
          const Node* o = view.topology.owner(s);
          if (!o || o->id != target_.id) {
            problem = "names " + (o ? short_id(o->id) : std::string("nobody")) + " as the owner of slot " +
                      std::to_string(s);
            break;
          }
          const Node* me = view.topology.myself();
          if (me && (me->migrating.count(s) || me->importing.count(s))) {
            problem = "has slot " + std::to_string(s) + " open";
            break;
          }
        }
        const Node* t = view.topology.find(target_.id);
        if (problem.empty() && t && t->config_epoch)
          for (const auto* m : view.topology.masters())
            if (m->id != target_.id && m->config_epoch && *m->config_epoch >= *t->config_epoch) {
              problem = "gives master " + short_id(m->id) + " config epoch " +
                        std::to_string(*m->config_epoch) + ", not below the target's " +
                        std::to_string(*t->config_epoch);
              break;
            }
      }
      if (problem.empty()) break;
      if (Clock::now() > deadline)
        return fail("after the claim of " + format_slot_ranges(slot_ranges(batch.slots)) + ", node " +
                    node.address() + ":" + std::to_string(node.port) + " " + problem + " (10 s later)");
      std::this_thread::sleep_for(milliseconds(1));
    }
  }
  return true;
}

// Replicas can hold keys of slots their master does not own: Redis 7.0 deletes a lost slot's keys without
// telling its replicas (REDIS-FACTS.md, "Cutover"), so after a move its replicas keep the moved keys, and if
// the slots ever come back those stale keys (deleted ones included) would be served again by a promoted
// replica. Nothing can write to a replica directly, so the deletes go through its master: with the slot in
// IMPORTING there, a script called after ASKING creates and removes each key; the replica applies both (a
// script's writes reach it as MULTI SET DEL EXEC) and ends without it, and the master is left with nothing
// (the script is atomic). Keys are listed from the replicas themselves, once they have caught up with their
// master.
bool MoveJob::purge_replica_keys(const Node& master, const std::string& importing_from,
                                 const std::vector<Slot>& slots, bool set_importing, std::uint64_t& purged) {
  purged = 0;
  const auto replicas = topology_.replicas_of(master.id);
  if (replicas.empty() || slots.empty()) return true;
  auto* m = control(master);
  if (!m) return fail("cannot connect to " + connect_error_);
  auto info = m->command({"INFO", "replication"});
  const auto offset = info && !info->is_error() ? info_integer(info->str, "master_repl_offset") : -1;
  std::vector<std::string> keys;
  for (const auto* r : replicas) {
    auto* c = control(*r);
    if (!c) {
      warnings_.push_back("could not reach replica " + r->address() + ":" + std::to_string(r->port) +
                          " to check it for keys of the moved slots");
      continue;
    }
    // Caught up first, so that it holds everything its master had.
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    for (;;) {
      auto ri = c->command({"INFO", "replication"});
      if (ri && !ri->is_error() && info_integer(ri->str, "slave_repl_offset") >= offset) break;
      if (Clock::now() > deadline) break;
      std::this_thread::sleep_for(milliseconds(5));
    }
    const auto n = count_keys(*c, slots);
    if (!n) return fail(c->error());
    for (std::size_t i = 0; i < slots.size(); ++i) {
      if ((*n)[i] == 0) continue;
      auto k = c->command({"CLUSTER", "GETKEYSINSLOT", std::to_string(slots[i]), std::to_string((*n)[i])});
      if (!k || k->is_error()) return fail(c->error());
      for (auto& e : k->elements)
        keys.push_back(std::move(e.str));
    }
  }
  if (keys.empty()) return true;
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  std::vector<std::vector<std::string>> cmds;
  if (set_importing)
    for (const Slot s : slots)
      cmds.push_back({"CLUSTER", "SETSLOT", std::to_string(s), "IMPORTING", importing_from});
  auto run = [&]() {
    if (cmds.empty()) return true;
    auto replies = m->pipeline(cmds);
    if (!replies) return fail(m->error());
    for (std::size_t i = 0; i < replies->size(); ++i)
      if ((*replies)[i].is_error())
        return fail("removing stale keys from the replicas of " + master.address() + ":" +
                    std::to_string(master.port) + ": " + join(cmds[i]) + ": " + (*replies)[i].str);
    cmds.clear();
    return true;
  };
  if (!run()) return false;
  // One script call per key does what MULTI SET DEL EXEC does (a script's writes reach the replicas as one
  // MULTI ... EXEC) in two commands instead of five.
  static const std::string kSetDel = "redis.call('SET', KEYS[1], '') return redis.call('DEL', KEYS[1])";
  for (const auto& k : keys) {
    cmds.push_back({"ASKING"});
    cmds.push_back({"EVAL", kSetDel, "1", k});
    if (cmds.size() >= 5000 && !run()) return false;
  }
  if (set_importing)
    for (const Slot s : slots)
      cmds.push_back({"CLUSTER", "SETSLOT", std::to_string(s), "STABLE"});
  if (!run()) return false;
  purged = keys.size();
  // Let the replicas apply it, and check.
  info = m->command({"INFO", "replication"});
  const auto after = info && !info->is_error() ? info_integer(info->str, "master_repl_offset") : -1;
  for (const auto* r : replicas) {
    auto* c = control(*r);
    if (!c) continue;
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    for (;;) {
      auto ri = c->command({"INFO", "replication"});
      if (ri && !ri->is_error() && info_integer(ri->str, "slave_repl_offset") >= after) break;
      if (Clock::now() > deadline) {
        warnings_.push_back("replica " + r->address() + ":" + std::to_string(r->port) +
                            " did not catch up within 10 s; it may still hold stale keys of the moved slots");
        break;
      }
      std::this_thread::sleep_for(milliseconds(5));
    }
  }
  return true;
}

bool MoveJob::clean_source_replicas() {
  for (const auto& src : sources_) {
    if (src.info.propagates_lost_slot_deletes()) continue;
    // A source left without slots has become a replica of the target and resynchronised from it, and so
    // have its replicas: nothing stale is left there.
    auto* c = control(src.node);
    auto role = c ? c->command({"ROLE"}) : std::nullopt;
    if (!role || role->is_error() || role->elements.empty() || role->elements[0].str != "master") continue;
    // Only what the target owns: a move that stopped part way leaves the rest with the source.
    std::vector<Slot> lost;
    std::copy_if(src.slots.begin(), src.slots.end(), std::back_inserter(lost),
                 [&](Slot s) { return claimed_[s]; });
    std::uint64_t purged = 0;
    if (!purge_replica_keys(src.node, target_.id, lost, true, purged)) return false;
    if (purged > 0) {
      journal({{"step", "replicas-cleaned"}, {"source", src.node.id}, {"keys", purged}});
      notes_.push_back("removed " + std::to_string(purged) + " moved keys from the replicas of " +
                       src.address.str() + " (" + src.info.name() +
                       " does not send the deletes of a lost slot to its replicas)");
    }
  }
  return true;
}

// After the last batch: the whole cluster as `slotshift check` sees it. A source left without slots turns
// itself into a replica of the target, and the other nodes learn that by gossip, so give them a moment.
bool MoveJob::settle() {
  const auto deadline = Clock::now() + std::chrono::seconds(15);
  std::string last;
  for (;;) {
    std::string error;
    const auto survey = survey_cluster(*parse_host_port(options_.common.cluster, error),
                                       options_.common.timeout, options_.common.credentials);
    auto findings = check(survey.merged);
    for (auto& f : compare_views(survey.views))
      findings.push_back(std::move(f));
    std::erase_if(findings, [](const Finding& f) { return f.kind == FindingKind::kNodeLoading; });
    if (survey.complete() && findings.empty()) return true;
    last = !survey.error.empty()         ? survey.error
           : !survey.unreachable.empty() ? "unreachable: " + survey.unreachable.front()
           : !survey.loading.empty()
               ? survey.loading.front()
               : std::string(finding_kind_name(findings.front().kind)) + ": " + findings.front().message;
    if (Clock::now() > deadline) break;
    std::this_thread::sleep_for(milliseconds(25));
  }
  warnings_.push_back(
      "every slot moved and every node agrees on its owner, but 15 s later the cluster is still "
      "not clean: " +
      last);
  return true;
}

bool MoveJob::cut_over_all() {
  std::size_t done = 0;
  for (auto& src : sources_) {
    // One batch at a time: each is planned from the slots left, with the delete speed measured so far.
    for (auto pending = plan_batches(src); !pending.empty(); pending = plan_batches(src)) {
      std::size_t total = done + pending.size();
      for (std::size_t i = &src - sources_.data() + 1; i < sources_.size(); ++i)
        total += plan_batches(sources_[i]).size();
      Batch batch = std::move(pending.front());
      char line[200];
      std::snprintf(line, sizeof line, "cutover  batch %zu/%zu  %zu slots  %s keys  lag %s", done + 1, total,
                    batch.slots.size(), with_commas(batch.keys).c_str(),
                    human_bytes(static_cast<double>(src.copier->lag_bytes())).c_str());
      progress(line);
      bool retry = false;
      bool claimed = cut_over(src, batch, retry);
      while (!claimed && retry && batch.attempts < 3)
        claimed = cut_over(src, batch, retry);
      if (!claimed && retry)
        fail("batch " + format_slot_ranges(slot_ranges(batch.slots)) + " was given up " +
             std::to_string(batch.attempts) + " times before its claim (" + warnings_.back() + ")");
      src.batches.push_back(std::move(batch));
      if (!claimed || !verify(src.batches.back())) return false;
      ++done;
    }
    src.copier->stop();
  }
  return true;
}

bool MoveJob::fits_native(std::uint64_t keys) const {
  return static_cast<double>(keys) <= native_batch_keys_;
}

void MoveJob::learn_native(const Batch& batch) {
  // A batch's stall is the handoff's own pause (noisy: 10 to 60 ms here, whatever the batch) plus the
  // source's delete of its keys (about 2 us a key). A model fitted to so noisy a fixed part shrinks batches
  // for nothing, and every batch costs a migration's fixed time (25 to 130 ms): so the batch size is steered
  // by the stalls themselves. Well within the budget: half as many keys again; over it: back by 40%.
  const double budget = static_cast<double>(options_.max_pause.count());
  const double size = static_cast<double>(std::max<std::uint64_t>(batch.source_keys, 1));
  native_floor_ms_ = calibrated_ ? std::min(native_floor_ms_, batch.pause_ms) : batch.pause_ms;
  calibrated_ = true;
  if (batch.pause_ms <= budget * 0.7)
    native_batch_keys_ = std::max(native_batch_keys_, size * 1.5);
  else if (batch.pause_ms > budget)
    native_batch_keys_ = std::max(1000.0, std::min(native_batch_keys_, size) * 0.6);
}

bool MoveJob::migrate_native_all() {
  // Keys per slot, to size the batches: the servers carry the values, so nothing else is read beforehand.
  std::vector<std::uint64_t> slot_keys(kSlotCount);
  for (auto& src : sources_) {
    auto* c = control(src.node);
    if (!c) return fail("cannot connect to the source " + connect_error_);
    const auto keys = count_keys(*c, src.slots);
    if (!keys)
      return fail("counting the keys of the moving slots on " + src.address.str() + ": " + c->error());
    for (std::size_t i = 0; i < src.slots.size(); ++i)
      slot_keys[src.slots[i]] = (*keys)[i];
  }
  // Following a job means reading CLUSTER GETSLOTMIGRATIONS about every millisecond, and it lists every job
  // the node keeps (up to cluster-slot-migration-log-max-len, 1000 by default, about 350 bytes each): with a
  // long log each call cost the source half a millisecond, and a move of 200 batches made it spend most of
  // its time answering. The log is kept short on the nodes involved while the move runs, then put back.
  struct LogLength {
    NodeClient* node;
    std::string value;
  };
  std::vector<LogLength> logs;
  auto shorten = [&](NodeClient* c) {
    auto r = c ? c->command({"CONFIG", "GET", "cluster-slot-migration-log-max-len"}) : std::nullopt;
    if (!r || r->is_error() || r->elements.size() != 2) return;
    if (std::stoll(r->elements[1].str) <= 16) return;
    auto set = c->command({"CONFIG", "SET", "cluster-slot-migration-log-max-len", "16"});
    if (set && !set->is_error()) logs.push_back({c, r->elements[1].str});
  };
  shorten(&target_control_);
  for (auto& src : sources_)
    shorten(control(src.node));
  if (!logs.empty())
    notes_.push_back(
        "cluster-slot-migration-log-max-len was 16 on the nodes involved while the move ran (it "
        "keeps CLUSTER GETSLOTMIGRATIONS cheap to follow), then put back");
  struct Restore {
    std::vector<LogLength>& logs;
    ~Restore() {
      for (auto& l : logs)
        l.node->command({"CONFIG", "SET", "cluster-slot-migration-log-max-len", l.value});
    }
  } restore{logs};

  std::size_t done = 0;
  for (auto& src : sources_) {
    for (;;) {
      // The next batch: consecutive slots not yet moved, as many as the learnt delete speed allows.
      Batch batch;
      for (const Slot s : src.slots) {
        if (claimed_[s]) continue;
        if (!batch.slots.empty() && !fits_native(batch.keys + slot_keys[s])) break;
        batch.slots.push_back(s);
        batch.keys += slot_keys[s];
      }
      if (batch.slots.empty()) break;
      char line[200];
      std::snprintf(line, sizeof line, "migrate  batch %zu  %zu slots  %s keys", done + 1, batch.slots.size(),
                    with_commas(batch.keys).c_str());
      progress(line);
      const bool moved = migrate_native(src, batch);
      src.batches.push_back(std::move(batch));
      if (!moved || !verify(src.batches.back())) return false;
      learn_native(src.batches.back());
      ++done;
    }
  }
  if (done >= 3 && native_floor_ms_ > static_cast<double>(options_.max_pause.count())) {
    char text[32];
    std::snprintf(text, sizeof text, "%.0f ms", native_floor_ms_);
    warnings_.push_back("every handoff by CLUSTER MIGRATESLOTS stalled the source's writers at least " +
                        std::string(text) + ", whatever the batch (the server's own pause): --max-pause " +
                        std::to_string(options_.max_pause.count()) + " ms could not be kept");
  }
  return true;
}

// One batch by CLUSTER MIGRATESLOTS. A second connection to the source measures what a writer of the moving
// slots waits (a write that changes nothing, to a key of the batch's first slot: paused during the handoff,
// delayed by the source's delete after it, answered MOVED once the slot has gone). The proxies hold the slots
// from the moment the handoff begins to the moment the target owns them, then send what they held there.
bool MoveJob::migrate_native(Source& src, Batch& batch) {
  ++batch.attempts;
  batch.source_keys = batch.keys;
  auto* c = control(src.node);
  if (!c) return fail("cannot connect to the source " + connect_error_);
  const std::string slots_text = format_slot_ranges(slot_ranges(batch.slots));

  std::atomic<bool> probing{true};
  std::atomic<double> stall_ms{0};
  std::string probe_key;
  for (int i = 0; probe_key.empty(); ++i)
    if (key_slot("slotshift:probe:" + std::to_string(i)) == batch.slots.front())
      probe_key = "slotshift:probe:" + std::to_string(i);
  NodeClient probe_client;
  const bool probe_ok =
      probe_client.connect(src.address, options_.common.timeout, options_.common.credentials);
  std::thread probe([&] {
    // LREM of a value no list holds: a write (so the handoff's pause delays it) that changes nothing.
    const std::vector<std::string> write = {"LREM", probe_key, "0", "slotshift-probe-" + owner_};
    while (probe_ok && probing.load()) {
      const auto t = Clock::now();
      if (!probe_client.command(write)) break;
      const double took = ms_since(t);
      if (took > stall_ms.load()) stall_ms.store(took);
      std::this_thread::sleep_until(t + milliseconds(1));  // a client, not a load on the source
    }
  });
  auto stop_probe = [&] {
    probing.store(false);
    if (probe.joinable()) probe.join();
    batch.pause_ms = stall_ms.load();
  };

  std::vector<std::pair<int, int>> ranges;
  for (const auto& r : slot_ranges(batch.slots))
    ranges.emplace_back(r.first, r.last);
  NativeMigration job(*c);
  journal({{"step", "migrate"}, {"source", src.node.id}, {"slots", slots_text}});
  const auto t0 = Clock::now();
  if (!job.start(ranges, target_.id)) {
    stop_probe();
    return fail("the source " + src.address.str() + " refused to migrate " + slots_text + ": " + job.error());
  }
  bool held = false;
  auto t_hold = t0;
  auto give_up = [&](const std::string& why) {
    bool cancelled = job.cancel();
    // The server ends a cancelled job on its own time: wait until it says so, so that nothing is left
    // running when slotshift exits.
    for (const auto until = Clock::now() + std::chrono::seconds(10); cancelled;) {
      const auto state = job.poll();
      if (state && state->finished()) break;
      if (Clock::now() > until) {
        cancelled = false;
        break;
      }
      std::this_thread::sleep_for(milliseconds(5));
    }
    stop_probe();
    if (held) release_proxies(slots_text);
    journal({{"step", "migrate-cancelled"}, {"slots", slots_text}, {"why", why}});
    return fail(why + (cancelled ? "; the migration was cancelled"
                                 : "; cancelling it failed too (" + job.error() + "): run slotshift check"));
  };
  // The source sends the batch's keys at about a million a second here; allow far more, and never less
  // than a minute.
  const auto deadline = t0 + std::chrono::seconds(60) + std::chrono::microseconds(50 * batch.keys);
  std::string last_state;
  int misses = 0;
  for (;;) {
    if (g_interrupted) return give_up("interrupted during the migration of batch " + slots_text);
    if (Clock::now() > deadline)
      return give_up("the migration of batch " + slots_text + " did not finish within " +
                     std::to_string(duration_cast<std::chrono::seconds>(deadline - t0).count()) +
                     " s (last state " + last_state + ")");
    const auto state = job.poll();
    if (!state) {
      // Just after MIGRATESLOTS the job may not be listed yet.
      if (last_state.empty() && ++misses < 1000) continue;
      return give_up(job.error());
    }
    last_state = state->state;
    if (state->failed()) {
      stop_probe();
      if (held) release_proxies(slots_text);
      journal({{"step", "migrate-failed"}, {"slots", slots_text}, {"state", state->state}});
      return fail("the migration of batch " + slots_text + " " + state->state +
                  (state->message.empty() ? std::string() : ": " + state->message) +
                  "; its slots stay with " + src.address.str());
    }
    if (!held && proxies_ && state->handing_off()) {
      // From here until the target owns the slots, the proxies keep their clients' commands for them. A
      // write already at the source waits there until the handoff is over (then it meets MOVED, which the
      // proxy follows): the hold must let it come back, so its wait is not the pause budget.
      t_hold = Clock::now();
      const auto calls =
          proxies_->hold(slots_text, options_.pause_timeout, options_.pause_timeout / 2, owner_);
      held = true;
      for (const auto& call : calls.calls)
        batch.proxies_held += call.ok;
      for (const auto& call : calls.calls)
        if (!call.ok && proxy_warned_.insert(call.proxy).second)
          warnings_.push_back("proxy " + call.proxy + " did not hold batch " + slots_text + " (" +
                              call.error + "); its clients meet MOVED for the moved slots, which it follows");
      continue;  // the hold took a while: look at the job again at once
    }
    if (state->succeeded()) break;
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  batch.claim_ms = ms_since(t0);
  for (const Slot s : batch.slots)
    claimed_[s] = true;
  if (held) {
    route_and_release(slots_text);
    batch.hold_ms = ms_since(t_hold);
  }
  // The source deletes the moved keys as it hands off; one more round trip of the probe covers the end of it.
  std::this_thread::sleep_for(milliseconds(2));
  stop_probe();
  journal({{"step", "migrated"},
           {"slots", slots_text},
           {"stall_ms", batch.pause_ms},
           {"job_ms", batch.claim_ms}});
  return true;
}

void MoveJob::rollback() {
  // Undo what this move did for every slot it has not claimed: stop the copiers (nothing more is written),
  // unpause, let the proxies go, delete the copied keys on the target (ASKING makes them reachable while
  // IMPORTING is set), then clear IMPORTING.
  for (auto& src : sources_) {
    if (src.copier) src.copier->stop();
    unpause(src);
  }
  if (proxies_) note_proxy_failures(proxies_->release_owner(owner_));
  std::vector<Slot> open;
  for (int s = 0; s < kSlotCount; ++s)
    if (importing_[static_cast<std::size_t>(s)]) open.push_back(static_cast<Slot>(s));
  if (open.empty()) return;
  follow_target_failover();
  // Keys are deleted only in slots that the target does not own in its own view, whatever this run believes:
  // once the target owns a slot, the source drops its copy, and the target's is the only one left.
  auto view = target_view(open);
  if (!view.known) {
    undo_complete_ = false;
    warnings_.push_back("not undone: the target could not be asked which slots it owns (" + view.error +
                        "), so the copied keys of slots " + format_slot_ranges(slot_ranges(open)) +
                        " were left on it, in IMPORTING; run slotshift check");
    return;
  }
  for (const Slot s : view.owned) {
    importing_[s] = false;
    claimed_[s] = true;
  }
  if (!view.owned.empty())
    warnings_.push_back("slots " + format_slot_ranges(slot_ranges(view.owned)) +
                        " are the target's in its own view, though their claim was not seen to succeed: they "
                        "are moved, and their keys were kept");
  open = view.other;
  const std::vector<Slot> stay = open;  // with their sources: all of them, whether or not there is work to do
  if (open.empty()) return;
  // A fresh connection: the old one may have been the one that failed.
  if (!target_control_.connect(target_address_, options_.common.timeout, options_.common.credentials)) {
    undo_complete_ = false;
    warnings_.push_back("not undone: cannot reconnect to the target " + target_control_.error() +
                        "; the copied keys of slots " + format_slot_ranges(slot_ranges(open)) +
                        " are still on it; run slotshift check");
    return;
  }
  // A slot whose claim ran SETSLOT STABLE but not NODE has left IMPORTING, and ASKING no longer reaches its
  // keys: it is put back in IMPORTING (from its source) for the delete.
  // Slots the target has neither in IMPORTING nor holds keys of were never touched (a move killed before its
  // IMPORTING step, say): nothing to undo there.
  {
    std::vector<Slot> untouched;
    for (const Slot s : open)
      if (!view.importing.count(s)) untouched.push_back(s);
    if (const auto counts = untouched.empty() ? std::optional<std::vector<std::uint64_t>>{}
                                              : count_keys(target_control_, untouched))
      for (std::size_t i = 0; i < untouched.size(); ++i)
        if ((*counts)[i] == 0) {
          importing_[untouched[i]] = false;
          std::erase(open, untouched[i]);
        }
  }
  std::uint64_t deleted = 0;
  std::string delete_error;
  // The target may learn of a source's failover at any moment, also half way through the deletes: then the
  // slots lose their owner in its view (below) and the pass starts again from a new look at the target.
  for (int pass = 0; pass < 3; ++pass) {
    if (pass > 0) {
      view = target_view(open);
      if (!view.known) {
        delete_error = "the target could not be asked again (" + view.error + ")";
        break;
      }
    }
    bool lost_owner = false;
    // A slot the target imports from a source that has since failed over has no owner in the target's view:
    // the old source turned into a replica, which owns nothing, and a node ignores what gossip says of a slot
    // it imports, so it never learns the new owner, and answers CLUSTERDOWN even after ASKING. Such slots
    // leave IMPORTING first; once the target has learnt their owner they go back into IMPORTING from it,
    // below.
    std::vector<Slot> unbound;
    for (const Slot s : open)
      if (view.unbound.count(s)) unbound.push_back(s);
    if (!unbound.empty()) {
      std::vector<std::vector<std::vector<std::string>>> stable;
      for (const Slot s : unbound)
        stable.push_back({{"CLUSTER", "SETSLOT", std::to_string(s), "STABLE"}});
      setslots(stable);
      for (const auto until = Clock::now() + std::max(milliseconds(10000), node_timeout_);;) {
        const auto again = target_view(open);
        if (again.known && again.unbound.empty()) {
          view = again;
          break;
        }
        if (Clock::now() > until) {
          undo_complete_ = false;
          warnings_.push_back(
              "not undone: the target names no owner for slots " + format_slot_ranges(slot_ranges(unbound)) +
              " (their source failed over); their copied keys are still on it; run slotshift check");
          return;
        }
        std::this_thread::sleep_for(milliseconds(100));
      }
    }
    std::vector<std::vector<std::vector<std::string>>> reimport;
    for (const Slot s : open)
      if (!view.importing.count(s)) {
        // From the slot's owner as the target sees it now (its source, or the replica that took its place).
        std::string from = view.owner.count(s) ? view.owner.at(s) : "";
        for (const auto& src : sources_)
          if (from.empty() && std::find(src.slots.begin(), src.slots.end(), s) != src.slots.end())
            from = src.node.id;
        reimport.push_back({{"CLUSTER", "SETSLOT", std::to_string(s), "IMPORTING", from}});
      }
    if (!reimport.empty())
      if (const auto error = setslots(reimport)) {
        undo_complete_ = false;
        warnings_.push_back("not undone: " + *error + "; the copied keys of slots " +
                            format_slot_ranges(slot_ranges(open)) +
                            " are still on the target; run slotshift check");
        return;
      }
    // A node that has just seen a failover may answer CLUSTERDOWN (or TRYAGAIN, LOADING) for a moment: such
    // a round is tried again, for a while.
    const auto transient_until = Clock::now() + std::chrono::seconds(15);
    auto transient = [&](const std::string& error) {
      return (error.starts_with("CLUSTERDOWN") || error.starts_with("TRYAGAIN") ||
              error.starts_with("LOADING")) &&
             Clock::now() < transient_until;
    };
    for (const Slot s : open) {
      if (lost_owner) break;
      for (int rounds = 0; rounds < 100000 && delete_error.empty() && !lost_owner; ++rounds) {
        auto keys = target_control_.command({"CLUSTER", "GETKEYSINSLOT", std::to_string(s), "1000"});
        if (!keys || keys->is_error()) {
          delete_error = keys ? keys->str : target_control_.error();
          break;
        }
        if (keys->elements.empty()) break;
        std::vector<std::vector<std::string>> dels;
        for (const auto& k : keys->elements) {
          dels.push_back({"ASKING"});
          dels.push_back({"DEL", k.str});
        }
        const auto replies = target_control_.pipeline(dels);
        if (!replies) delete_error = target_control_.error();
        std::uint64_t done = 0;
        for (std::size_t i = 0; replies && i < replies->size() && delete_error.empty(); ++i) {
          if (!(*replies)[i].is_error()) {
            done += i % 2;  // the DELs, not the ASKINGs
          } else if ((*replies)[i].str.find("Hash slot not served") != std::string::npos) {
            lost_owner = true;
            break;
          } else if (transient((*replies)[i].str)) {
            std::this_thread::sleep_for(milliseconds(100));
            break;  // this round again
          } else {
            delete_error = join(dels[i]) + ": " + (*replies)[i].str;
          }
        }
        deleted += done;
      }
    }
    if (!lost_owner) break;
    delete_error = "the target kept losing the owner of the slots (their source failed over)";
    if (pass < 2) delete_error.clear();
  }
  std::optional<std::string> stable_error;
  if (delete_error.empty() && !open.empty()) {
    std::vector<std::vector<std::vector<std::string>>> stable;
    for (const Slot s : open)
      stable.push_back({{"CLUSTER", "SETSLOT", std::to_string(s), "STABLE"}});
    stable_error = setslots(stable);
    if (!stable_error)
      for (const Slot s : open)
        importing_[s] = false;
  }
  if (!delete_error.empty() || stable_error) undo_complete_ = false;
  journal({{"step", "rolled-back"},
           {"slots", format_slot_ranges(slot_ranges(open))},
           {"keys_deleted", deleted},
           {"complete", delete_error.empty() && !stable_error}});
  warnings_.push_back(
      "undone: " + std::to_string(stay.size()) + " slots not claimed (" +
      format_slot_ranges(slot_ranges(stay)) + ") stay with their owner; " + std::to_string(deleted) +
      " copied keys were deleted from the target" +
      (!delete_error.empty() ? ", but deleting the rest failed (" + delete_error +
                                   "): they are still there, in IMPORTING; run slotshift check"
       : stable_error ? ", but clearing IMPORTING failed (" + *stable_error + "): run slotshift check"
                      : ""));
}

void MoveJob::report(bool ok) {
  end_progress();
  std::uint64_t keys = 0, bytes = 0, expired = 0, chunked = 0, repairs = 0, applied = 0, unknown = 0;
  double max_pause = 0, max_stall = 0, max_refuse = 0;
  nlohmann::json sources = nlohmann::json::array(), batches = nlohmann::json::array();
  for (const auto& src : sources_) {
    if (native_) {
      // The servers carried the values: what is known is what each batch counted before it moved.
      std::uint64_t moved = 0;
      for (const auto& b : src.batches)
        if (claimed_[b.slots.front()]) moved += b.source_keys;
      keys += moved;
      sources.push_back({{"source", src.address.str()},
                         {"source_id", src.node.id},
                         {"server", src.info.name()},
                         {"engine", "native"},
                         {"slots", format_slot_ranges(slot_ranges(src.slots))},
                         {"keys_moved", moved}});
    }
    for (const auto& b : src.batches) {
      if (b.attempts == 0) continue;
      max_pause = std::max(max_pause, b.pause_ms);
      max_refuse = std::max(max_refuse, b.refuse_ms);
      max_stall = std::max(max_stall, stall_ms(b));
      batches.push_back({{"source", src.address.str()},
                         {"slots", format_slot_ranges(slot_ranges(b.slots))},
                         {"slot_count", b.slots.size()},
                         {"keys", b.source_keys},
                         {"pause_ms", b.pause_ms},
                         {"refuse_ms", b.refuse_ms},
                         {"stall_ms", stall_ms(b)},
                         {"wait_ms", b.wait_ms},
                         {"claim_ms", b.claim_ms},
                         {"claim_send_ms", b.claim_send_ms},
                         {"hold_ms", b.hold_ms},
                         {"proxies_held", b.proxies_held},
                         {"attempts", b.attempts}});
    }
    if (!src.copier) continue;
    const auto& st = src.copier->stats();
    keys += st.keys_copied;
    bytes += st.bytes_copied;
    expired += st.keys_expired;
    chunked += st.keys_chunked;
    repairs += st.repairs;
    applied += st.stream_applied;
    unknown += st.unknown_commands;
    sources.push_back({{"source", src.address.str()},
                       {"source_id", src.node.id},
                       {"server", src.info.name()},
                       {"slots", format_slot_ranges(slot_ranges(src.slots))},
                       {"keys_copied", st.keys_copied.load()},
                       {"bytes_copied", st.bytes_copied.load()},
                       {"keys_expired_skipped", st.keys_expired.load()},
                       {"keys_chunked", st.keys_chunked.load()},
                       {"snapshot_bytes", st.rdb_bytes.load()},
                       {"stream_bytes", st.stream_bytes.load()},
                       {"stream_operations_applied", st.stream_applied.load()},
                       {"keys_repaired", st.repairs.load()},
                       {"unknown_commands_dropped", st.unknown_commands.load()},
                       {"writes_after_fence", st.writes_after_fence.load()},
                       {"snapshot_header_ms", st.header_ms.load()},
                       {"snapshot_parsed_ms", st.received_ms.load()},
                       {"snapshot_applied_ms", st.applied_ms.load()},
                       {"spilled_peak_bytes", src.copier->spool_peak()}});
  }
  for (const auto& src : sources_)
    if (src.copier && src.copier->stats().writes_after_fence > 0)
      warnings_.push_back(std::to_string(src.copier->stats().writes_after_fence.load()) +
                          " writes reached the source " + src.address.str() +
                          " for slots past their fence and are not on the target (first: " +
                          src.copier->first_late_write() + ")");
  if (unknown > 0)
    warnings_.push_back(
        std::to_string(unknown) +
        " commands of the stream were not in the command table (module commands?) and were not "
        "applied to the target");
  const double elapsed = ms_since(started_) / 1000;
  if (options_.common.json) {
    nlohmann::json j{{"ok", ok},
                     {"target", target_address_.str()},
                     {"target_id", target_.id},
                     {"sources", sources},
                     {"batches", batches},
                     {"keys_copied", keys},
                     {"bytes_copied", bytes},
                     {"elapsed_s", elapsed},
                     {"copy_s", copy_s_},
                     {"cutover_s", cutover_s_},
                     {"replica_cleanup_s", cleanup_s_},
                     {"settle_s", settle_s_},
                     {"max_pause_ms", max_pause},
                     {"max_refuse_ms", max_refuse},
                     {"max_stall_ms", max_stall},
                     {"warnings", warnings_},
                     {"notes", notes_}};
    if (!ok) j["error"] = error_;
    out_ << j.dump(2) << "\n";
    return;
  }
  char line[256];
  for (const auto& b : batches) {
    if (native_) {
      std::snprintf(line, sizeof line,
                    "  batch %-24s %6zu slots %9s keys  stall %6.1f ms (migration %.1f ms)\n",
                    b["slots"].get<std::string>().substr(0, 24).c_str(), b["slot_count"].get<std::size_t>(),
                    with_commas(b["keys"].get<std::uint64_t>()).c_str(), b["pause_ms"].get<double>(),
                    b["claim_ms"].get<double>());
      out_ << line;
      continue;
    }
    std::snprintf(
        line, sizeof line,
        "  batch %-24s %6zu slots %9s keys  pause %6.1f ms (wait %.1f, claim %.1f of which sent %.1f)",
        b["slots"].get<std::string>().substr(0, 24).c_str(), b["slot_count"].get<std::size_t>(),
        with_commas(b["keys"].get<std::uint64_t>()).c_str(), b["pause_ms"].get<double>(),
        b["wait_ms"].get<double>(), b["claim_ms"].get<double>(), b["claim_send_ms"].get<double>());
    out_ << line;
    if (const double refused = b["refuse_ms"].get<double>(); refused > 0) {
      std::snprintf(line, sizeof line, ", then writes refused %.1f ms", refused);
      out_ << line;
    }
    out_ << "\n";
  }
  for (const auto& n : notes_)
    out_ << "note: " << n << "\n";
  for (const auto& w : warnings_)
    out_ << "warning: " << w << "\n";
  if (!ok) {
    err_ << "slotshift move: " << error_ << "\n";
    return;
  }
  std::snprintf(line, sizeof line,
                "moved %s keys (%s) to %s %s in %.2f s (copy %.2f s), %zu batches, longest %s %.1f ms\n",
                with_commas(keys).c_str(), human_bytes(static_cast<double>(bytes)).c_str(),
                short_id(target_.id).c_str(), target_address_.str().c_str(), elapsed, copy_s_, batches.size(),
                native_                     ? "stall of a writer"
                : options_.fence == "proxy" ? "stall of the source"
                                            : "pause",
                max_stall);
  out_ << line;
  if (native_) return;
  out_ << "  " << with_commas(applied) << " live writes followed, " << with_commas(repairs)
       << " keys read again after a refused replay, " << with_commas(expired) << " expired keys skipped, "
       << with_commas(chunked) << " big keys sent in chunks\n";
}

int MoveJob::run() {
  move_id_ = "move-" + std::to_string(::getpid()) + "-" +
             std::to_string(
                 duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  if (!plan()) {
    // Refused before anything was touched; machines get that as JSON too.
    if (options_.common.json)
      out_ << nlohmann::json{{"ok", false}, {"error", error_}, {"refused_before_start", true}}.dump(2)
           << "\n";
    err_ << "slotshift move: " << error_ << "\n";
    return error_.starts_with("--") ? 2 : 1;
  }
  if (options_.dry_run) {
    if (!estimate()) {
      err_ << "slotshift move: " << error_ << "\n";
      return 1;
    }
    print_plan();
    return 0;
  }
  if (sources_.empty()) {
    notes_.push_back("nothing to move: every slot named is already on " + target_address_.str());
    report(true);
    return 0;
  }
  // One move at a time on each node it changes, whoever runs it.
  lease_ = std::make_unique<MoveLease>(move_id_, options_.lease_ttl, options_.common.timeout,
                                       options_.common.credentials);
  std::vector<HostPort> leased{target_address_};
  for (const auto& src : sources_)
    leased.push_back(src.address);
  if (!lease_->acquire(leased)) {
    if (options_.common.json)
      out_ << nlohmann::json{{"ok", false}, {"error", lease_->error()}, {"refused_before_start", true}}.dump(
                  2)
           << "\n";
    err_ << "slotshift move: " << lease_->error() << "\n";
    return 1;
  }
  if (!open_journal()) return 2;
  journal({{"step", "plan"},
           {"lease", leased.size()},
           {"target", target_.id},
           {"target_address", target_address_.str()},
           {"slots", options_.slots},
           {"proxies",
            [&] {
              auto a = nlohmann::json::array();
              for (const auto& p : options_.proxies)
                a.push_back(p.str());
              return a;
            }()},
           {"proxy_owner", owner_},
           {"sources", [&] {
              auto a = nlohmann::json::array();
              for (const auto& s : sources_)
                a.push_back({{"id", s.node.id},
                             {"address", s.address.str()},
                             {"slots", format_slot_ranges(slot_ranges(s.slots))}});
              return a;
            }()}});
  struct sigaction action {};
  action.sa_handler = on_interrupt;
  struct sigaction old_int {
  }, old_term{};
  sigaction(SIGINT, &action, &old_int);
  sigaction(SIGTERM, &action, &old_term);
  g_interrupted = 0;

  auto timed = [](double& seconds, auto&& step) {
    const auto t0 = Clock::now();
    const bool r = step();
    seconds = ms_since(t0) / 1000;
    return r;
  };
  const bool ok = native_ ? timed(cutover_s_, [&] { return migrate_native_all(); }) &&
                                timed(settle_s_, [&] { return settle(); })
                          : prepare() && copy() && timed(cutover_s_, [&] { return cut_over_all(); }) &&
                                timed(cleanup_s_, [&] { return clean_source_replicas(); }) &&
                                timed(settle_s_, [&] { return settle(); });
  if (!ok) {
    rollback();
    // The batches claimed before the failure are moved: their keys go from the source's replicas as after a
    // move that went well.
    clean_source_replicas();
  }
  if (ok) journal({{"step", "done"}});
  report(ok);
  for (auto& src : sources_)
    if (src.copier) src.copier->stop();
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  return ok ? 0 : 1;
}

// After a crash (of slotshift, of its machine) the journal says what the move planned and changed, and the
// nodes say where things are. Abort puts back what was not claimed, exactly as a move that fails does
// (rollback(): only in slots the target does not own by its own word), restores the settings the journal
// recorded, releases the proxies' holds and unpauses the sources, and removes claimed batches' keys from a
// 7.0 source's replicas. Resume does the same, then moves what is left of the plan as a new move recorded
// in the same journal: batches that were not claimed are copied again.
int MoveJob::recover(bool resume) {
  const char* verb = resume ? "resume" : "abort";
  std::string error;
  const std::string path = options_.journal.empty() ? latest_unfinished_journal(error) : options_.journal;
  if (path.empty()) {
    err_ << "slotshift " << verb << ": " << error << "\n";
    return 2;
  }
  const auto state = read_journal(path, error);
  if (!state) {
    err_ << "slotshift " << verb << ": " << error << "\n";
    return 2;
  }
  if (state->finished) {
    err_ << "slotshift " << verb << ": the move " << state->move_id << " of " << path << " has already "
         << (state->last_step == "done" ? "ended" : "been aborted") << "; nothing to do\n";
    return 0;
  }
  move_id_ = state->move_id;
  journal_path_ = path;
  journal_fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (journal_fd_ < 0) {
    err_ << "slotshift " << verb << ": cannot append to " << path << ": " << std::strerror(errno) << "\n";
    return 2;
  }

  // The nodes, as the cluster knows them now (ids from the journal, addresses from the cluster).
  const auto seed = parse_host_port(options_.common.cluster, error);
  if (!seed) {
    err_ << "slotshift " << verb << ": --cluster: " << error << "\n";
    return 2;
  }
  const auto survey = survey_cluster(*seed, options_.common.timeout, options_.common.credentials);
  if (!survey.error.empty()) {
    err_ << "slotshift " << verb << ": " << survey.error << "\n";
    return 1;
  }
  topology_ = survey.merged;
  auto node_of = [&](const std::string& id, const std::string& address) {
    if (const Node* n = topology_.find(id)) return *n;
    Node n;
    n.id = id;
    if (const auto hp = parse_host_port(address, error)) {
      n.ip = hp->host;
      n.port = hp->port;
    }
    return n;
  };
  target_ = node_of(state->target_id, state->target_address);
  target_address_ = HostPort{target_.address(), target_.port};
  std::vector<Slot> planned;
  for (const auto& js : state->sources) {
    Source src;
    src.node = node_of(js.id, js.address);
    src.address = HostPort{src.node.address(), src.node.port};
    src.slots = js.slots;
    planned.insert(planned.end(), js.slots.begin(), js.slots.end());
    if (auto* c = control(src.node)) {
      if (auto r = c->command({"INFO", "server"}); r && !r->is_error()) {
        std::string why;
        parse_server_info(r->str, src.info, why);
      }
      // The setting a killed move may have left out of reach; the journal has what it was.
      if (const auto it = state->restore_min_replicas.find(js.id); it != state->restore_min_replicas.end()) {
        src.min_replicas_to_write = it->second.first;
        src.min_replicas_max_lag = it->second.second;
        src.can_refuse = true;
        auto now = c->command({"CONFIG", "GET", "min-replicas-to-write"});
        src.refusing =
            now && !now->is_error() && now->elements.size() == 2 && now->elements[1].str == kRefuseAllWrites;
      }
    }
    src.paused = true;  // CLIENT UNPAUSE: a killed move's pause may still be running
    sources_.push_back(std::move(src));
  }
  // A move that is still running holds its lease: recovering under it would fight it.
  lease_ = std::make_unique<MoveLease>(move_id_ + "-" + verb, options_.lease_ttl, options_.common.timeout,
                                       options_.common.credentials);
  std::vector<HostPort> leased{target_address_};
  for (const auto& src : sources_)
    leased.push_back(src.address);
  if (!lease_->acquire(leased)) {
    err_ << "slotshift " << verb << ": " << lease_->error() << "\n";
    return 1;
  }
  if (!state->proxies.empty()) {
    std::vector<HostPort> proxies;
    for (const auto& p : state->proxies)
      if (const auto hp = parse_host_port(p, error)) proxies.push_back(*hp);
    proxies_ = std::make_unique<ProxyControl>(proxies, options_.proxy_dns, options_.proxy_token,
                                              options_.common.timeout);
    owner_ = state->proxy_owner;
  }
  // Candidates for undoing: every slot of the plan not claimed per the journal (a "claimed" record is written
  // once the source knows); rollback() asks the target which of them are its own all the same.
  for (const Slot s : planned)
    (state->claimed.count(s) ? claimed_ : importing_)[s] = true;
  journal(
      {{"step", std::string(verb) + "-started"}, {"by_pid", ::getpid()}, {"last_step", state->last_step}});
  rollback();
  clean_source_replicas();
  std::vector<Slot> moved, left;
  for (const Slot s : planned)
    (claimed_[s] ? moved : left).push_back(s);
  journal({{"step", "aborted"},
           {"moved", format_slot_ranges(slot_ranges(moved))},
           {"undone", format_slot_ranges(slot_ranges(left))},
           {"complete", undo_complete_}});
  lease_->release();
  out_ << (resume ? "resuming" : "aborted") << " move " << move_id_ << " (journal " << path << ", last step "
       << state->last_step << (state->torn_lines ? ", a torn last record skipped" : "") << ")\n";
  if (!moved.empty())
    out_ << "  the target " << short_id(target_.id) << " owns " << moved.size() << " of its slots ("
         << format_slot_ranges(slot_ranges(moved)) << "): they stay moved\n";
  for (const auto& n : notes_)
    out_ << "note: " << n << "\n";
  for (const auto& w : warnings_)
    out_ << "warning: " << w << "\n";
  if (!undo_complete_) {
    err_ << "slotshift " << verb << ": not everything could be undone (see above); run it again\n";
    return 1;
  }
  if (!resume) {
    out_ << "  " << left.size() << " slots are with their sources again, as before the move\n";
    return 0;
  }
  if (left.empty()) {
    out_ << "  nothing is left to move\n";
    return 0;
  }
  MoveOptions rest = options_;
  std::vector<SlotRange> ranges = slot_ranges(left);
  rest.slots = format_slot_ranges(ranges);
  std::replace(rest.slots.begin(), rest.slots.end(), ' ', ',');
  rest.to = target_.id;
  rest.journal = path;
  out_ << "  moving the " << left.size() << " slots left (" << format_slot_ranges(ranges) << ") to "
       << short_id(target_.id) << "\n";
  ::close(journal_fd_);  // the new move appends to the same file
  journal_fd_ = -1;
  MoveJob job(rest, out_, err_);
  return job.run();
}

int run_abort(const MoveOptions& options, std::ostream& out, std::ostream& err) {
  MoveJob job(options, out, err);
  return job.recover(false);
}

int run_resume(const MoveOptions& options, std::ostream& out, std::ostream& err) {
  MoveJob job(options, out, err);
  return job.recover(true);
}

int run_move(const MoveOptions& options, std::ostream& out, std::ostream& err) {
  MoveJob job(options, out, err);
  return job.run();
}

}  // namespace slotshift
