// How many slots go into one cutover, so that the stall it costs the source's clients stays within
// --max-pause. Pure: it learns only from the batches it is shown, so it is unit-tested without a server.
//
// A batch's stall is a fixed part (the fence's round trips, the offset wait, the key counts, the claim's
// commands) plus the source's synchronous delete of the batch's keys when it learns the claim, which grows
// with the keys, plus a part per slot (two commands on the target for each). The source's own delay in
// learning a claim is a floor no batch size changes. All of them are learnt from the batches as they go;
// until the first batch is measured, batches stay small.
//
// With --engine native (CLUSTER MIGRATESLOTS) the servers' own handoff pause is too noisy to fit a model to:
// the batch size is steered by the stalls themselves.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/slot.h"

namespace slotshift {

// One cutover: consecutive slots of one source, what they hold, and what the cutover measured.
struct Batch {
  std::vector<Slot> slots;
  std::uint64_t keys = 0, bytes = 0;
  // Measured.
  double pause_ms = 0;       // CLIENT PAUSE to CLIENT UNPAUSE on the source
  double wait_ms = 0;        // until the target had applied the source's offset
  double claim_ms = 0;       // first SETSLOT NODE until the source named the target as owner
  double claim_send_ms = 0;  // the claim's commands on the target
  double hold_ms = 0;        // the proxies' hold, from HOLD to RELEASE: what their clients waited at most
  double hold_call_ms = 0;   // the HOLD call to every proxy, until the last answered (or its deadline)
  double handoff_ms = 0;     // the handoff (ROUTE + RELEASE) call to every proxy, likewise
  double started_ms = 0;     // since the move began, at the start of the batch's (last) cutover
  int proxies_held = 0;
  int proxies_held_with_handoff = 0;  // of those, held by the last batch's handoff (one call for both)
  std::vector<std::string>
      proxies_asked_again;  // answered that they could not drain in time; asked once more
  // Left out at an earlier batch and asked again before this one's fence (ProxyControl::begin_batch): those
  // that answered, and are in this batch's calls, and those that did not.
  std::vector<std::string> proxies_back, proxies_still_out;
  // Had placed this batch's hold with the last batch's handoff, which was given back before the fence (the
  // target behind, or too long between batches) and placed again.
  std::vector<std::string> proxies_held_again;
  double refuse_ms =
      0;  // writes refused on the source (servers that cannot keep the pause through the claim)
  double verify_ms = 0;                            // until every node agreed
  std::uint64_t source_keys = 0, target_keys = 0;  // counted during the fence
  int attempts = 0;
  bool handed_off = false;  // the proxies were sent its handoff
  // Its handoff placed the next batch's hold in the same call (sent once the source had learnt the claim, as
  // the group's last or a batch of its own): false for one handed off while the source learnt, for a group's
  // batch whose handoff went with a later one's or ended at a slow verify, and for a source's last batch.
  bool handoff_placed_next_hold = false;
  // How many batches the hold it was cut over under was placed for (more than one: a group, whose handoffs
  // go as one call after its last batch), and how many of its attempts ran under a group's hold placed for
  // an earlier batch (placing no hold of their own).
  std::size_t hold_batches = 0;
  int attempts_under_group_hold = 0;
};

class BatchSizer {
 public:
  // A batch holds at most this many bytes of values, whatever the pause budget: the target's copy of them is
  // what a failed batch deletes again.
  static constexpr std::uint64_t kMaxBatchBytes = 256ull << 20;

  // `fence_proxy`: the source is never paused (--fence proxy); its stall is then its own delete at the claim.
  BatchSizer(std::chrono::milliseconds max_pause, bool fence_proxy)
      : budget_ms_(static_cast<double>(max_pause.count())), fence_proxy_(fence_proxy) {}

  double predicted_pause_ms(std::uint64_t keys, std::size_t slots) const;
  bool fits(std::uint64_t keys, std::size_t slots) const;
  // What a batch cost the source's clients.
  double stall_ms(const Batch& batch) const;
  // Learns from a claimed batch of `source`. Once per move, a warning when the part no batch size changes is
  // already over the budget.
  std::optional<std::string> learn(const Batch& batch, const std::string& source);
  // The batches of `slots` not yet claimed, in order, from the keys and bytes per slot.
  std::vector<Batch> plan(const std::vector<Slot>& slots, const std::function<std::uint64_t(Slot)>& keys_of,
                          const std::function<std::uint64_t(Slot)>& bytes_of,
                          const std::vector<bool>& claimed) const;
  // Keys per batch as things stand, for a plan's estimate.
  double keys_per_batch() const;
  bool calibrated() const { return calibrated_; }

  // --engine native: the next batch of `slots` not yet claimed.
  Batch next_native(const std::vector<Slot>& slots, const std::vector<std::uint64_t>& slot_keys,
                    const std::vector<bool>& claimed) const;
  void learn_native(const Batch& batch);
  // The least stall of any native handoff so far.
  double native_floor_ms() const { return native_floor_ms_; }

 private:
  double budget_ms_;
  bool fence_proxy_;
  double pause_fixed_ms_ = 3.0;
  double pause_us_per_key_ = 2.0;
  double pause_us_per_slot_ = 15.0;  // measured at about 10 us per SETSLOT on 7.0.15
  double claim_floor_ms_ = 0;
  bool claim_floor_known_ = false, floor_warned_ = false;
  bool calibrated_ = false;
  bool native_calibrated_ = false;
  double native_floor_ms_ = 0;
  double native_batch_keys_ = 5000;
};

}  // namespace slotshift
