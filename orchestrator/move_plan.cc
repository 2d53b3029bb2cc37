#include "orchestrator/move_plan.h"

#include "orchestrator/move_job.h"

#include "orchestrator/cluster_check.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "common/server_info.h"
#include "common/topology.h"
#include "orchestrator/native_migration.h"

namespace slotshift {

using std::chrono::milliseconds;

std::optional<std::string> refuse_options(const MoveOptions& options, bool has_proxies) {
  if (options.engine == "native" && options.fence == "proxy")
    return "--engine native: the servers fence each handoff themselves (a short pause of the source's "
           "writes); --fence proxy applies to the default engine only";
  if (options.fence == "proxy" && !has_proxies)
    return "--fence proxy: the proxies are the fence, so name them with --proxy or --proxy-dns";
  return std::nullopt;
}

SlotPlan plan_slots(const ClusterSurvey& survey, const std::vector<Slot>& slots, const std::string& to) {
  SlotPlan plan;
  auto refuse = [&](std::string why) {
    plan.refusal = std::move(why);
    return plan;
  };
  if (!survey.error.empty()) return refuse(survey.error);
  if (!survey.unreachable.empty())
    return refuse("every node must answer before slots move; unreachable: " + survey.unreachable.front());
  if (!survey.loading.empty())
    return refuse("every node must answer before slots move; " + survey.loading.front() +
                  " (--timeout-ms waits longer)");
  const Topology& topology = survey.merged;
  // A move starts only from a clean cluster: an open slot, a failing node, two masters with one config epoch
  // or nodes that disagree are how clusters get broken, and a move would make it worse.
  auto findings = check(topology);
  for (auto& f : compare_views(survey.views))
    findings.push_back(std::move(f));
  for (const auto& f : findings) {
    // Moving slots to a master that has none is how its replicas get something to protect.
    if (f.kind == FindingKind::kNodeLoading || f.kind == FindingKind::kReplicasOfEmptyMaster) {
      plan.warnings.push_back(f.message);
      continue;
    }
    return refuse("the cluster is not clean (" + std::string(finding_kind_name(f.kind)) + ": " + f.message +
                  "); run slotshift check, fix it, then move");
  }

  // The target: an id, a unique id prefix, or an address.
  const Node* target = nullptr;
  std::string error;
  if (const auto hp = parse_host_port(to, error)) {
    for (const auto& n : topology.nodes)
      if (n.port == hp->port && (n.address() == hp->host || n.ip == hp->host)) target = &n;
  } else {
    for (const auto& n : topology.nodes) {
      if (!n.id.starts_with(to) || to.size() < 4) continue;
      if (target) return refuse("--to " + to + " names more than one node");
      target = &n;
    }
  }
  if (!target) return refuse("--to " + to + " is not a node of this cluster");
  if (!target->is_master())
    return refuse("--to " + to + " is a replica (of " + short_id(target->master_id) +
                  "); slots can only move to a master");
  plan.target = *target;

  // Group the slots by their owner.
  std::map<std::string, std::vector<Slot>> by_owner;
  for (const Slot s : slots) {
    const Node* owner = topology.owner(s);
    if (!owner) return refuse("slot " + std::to_string(s) + " has no owner");
    if (owner->id == target->id)
      plan.skipped.push_back(s);
    else
      by_owner[owner->id].push_back(s);
  }
  for (auto& [id, owned] : by_owner)
    plan.sources.push_back({*topology.find(id), std::move(owned)});
  return plan;
}

bool MoveJob::plan() {
  std::string error;
  const auto seed = parse_host_port(options_.common.cluster, error);
  if (!seed) return fail("--cluster: " + error);
  const auto slots = parse_slot_list(options_.slots, error);
  if (!slots) return fail("--slots: " + error);
  const bool has_proxies = !options_.proxies.empty() || !options_.proxy_dns.empty();
  if (auto refused = refuse_options(options_, has_proxies)) return fail(std::move(*refused));
  if (has_proxies) {
    proxies_ = std::make_unique<ProxyControl>(options_.proxies, options_.proxy_dns, options_.proxy_token,
                                              options_.common.timeout);
    owner_ = "slotshift-" + move_id_;
  }

  auto survey = survey_cluster(*seed, options_.common.timeout, options_.common.credentials);
  auto planned = plan_slots(survey, *slots, options_.to);
  if (!planned.refusal.empty()) return fail(std::move(planned.refusal));
  if (!options_.dry_run && !planned.sources.empty()) {
    // One move at a time on each node it changes, whoever runs it. The lease comes before every other
    // check: a move that started an instant earlier is copying into the target, and its keys there must be
    // named as that move's, never as keys to delete.
    lease_ = std::make_unique<MoveLease>(move_id_, options_.lease_ttl, options_.common.timeout,
                                         options_.common.credentials);
    leased_ = {HostPort{planned.target.address(), planned.target.port}};
    for (const auto& src : planned.sources)
      leased_.push_back(HostPort{src.node.address(), src.node.port});
    if (!lease_->acquire(leased_)) return fail(lease_->error());
    lease_->close_elsewhere(every_node(survey.merged));
    options_.common.credentials.lease_lost = lease_->fence();
    if (proxies_) proxies_->set_fence(lease_->fence());
    // What the plan rests on is read again under the lease: a move that ended between the first look and
    // the lease has changed owners and keys since.
    survey = survey_cluster(*seed, options_.common.timeout, options_.common.credentials);
    planned = plan_slots(survey, *slots, options_.to);
    if (!planned.refusal.empty()) return fail(std::move(planned.refusal));
    auto is_leased = [&](const Node& n) {
      return std::ranges::find(leased_, HostPort{n.address(), n.port}) != leased_.end();
    };
    if (!is_leased(planned.target) ||
        !std::ranges::all_of(planned.sources, [&](const auto& src) { return is_leased(src.node); }))
      return fail(
          "the slots changed owners while slotshift took the move lease; nothing was touched, run the "
          "move again");
  }
  {
    // What only the nodes themselves say: keys left in slots a node does not own (a move into it would
    // revive them), a master refusing writes, a move of this machine killed half way. A running move was
    // refused by its lease, above, naming its holder (and a dry run has no lease of its own to see).
    ClusterHealth health;
    health.survey = survey;
    add_node_findings(health, options_.common);
    for (const auto& f : health.findings)
      if (f.kind != FindingKind::kMoveInProgress)
        return fail("the cluster is not clean (" + std::string(finding_kind_name(f.kind)) + ": " + f.message +
                    "); run slotshift check, fix it, then move");
  }
  topology_ = survey.merged;
  warnings_ = std::move(planned.warnings);
  target_ = planned.target;
  target_address_ = HostPort{target_.address(), target_.port};
  skipped_ = std::move(planned.skipped);
  for (auto& from : planned.sources) {
    Source src;
    src.node = std::move(from.node);
    src.address = HostPort{src.node.address(), src.node.port};
    src.slots = std::move(from.slots);
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
  const double batch_keys = sizer_.keys_per_batch();
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

}  // namespace slotshift
