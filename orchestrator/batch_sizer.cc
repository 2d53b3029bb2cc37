#include "orchestrator/batch_sizer.h"

#include <algorithm>
#include <cstdio>

namespace slotshift {

double BatchSizer::predicted_pause_ms(std::uint64_t keys, std::size_t slots) const {
  return pause_fixed_ms_ + claim_floor_ms_ +
         (static_cast<double>(keys) * pause_us_per_key_ + static_cast<double>(slots) * pause_us_per_slot_) /
             1000;
}

bool BatchSizer::fits(std::uint64_t keys, std::size_t slots) const {
  // Aim at 70% of the budget, so that a batch a little slower than predicted still fits. Until the first
  // batch has been measured, batches stay small. When the part no batch size changes (the source's own
  // delay in learning a claim: tens of ms on Valkey 9.1) already takes most of the budget, smaller batches
  // would only mean more stalls of the same length: the part that grows with the batch then gets 30%.
  if (!calibrated_ && (keys > 5000 || slots > 500)) return false;
  const double floor = pause_fixed_ms_ + claim_floor_ms_;
  return predicted_pause_ms(keys, slots) - floor <= std::max(budget_ms_ * 0.7 - floor, budget_ms_ * 0.3);
}

// The pause (and the refusal of writes that follows it on servers that cannot stay paused through a claim),
// or with --fence proxy (no pause) the source's own stall while it deletes the batch's keys on learning the
// claim (claim_ms ends when it answers again).
double BatchSizer::stall_ms(const Batch& batch) const {
  return fence_proxy_ ? batch.claim_ms : batch.pause_ms + batch.refuse_ms;
}

std::optional<std::string> BatchSizer::learn(const Batch& batch, const std::string& source) {
  std::optional<std::string> warning;
  const double stall = stall_ms(batch);
  pause_fixed_ms_ = std::min(pause_fixed_ms_, std::max(0.5, stall - batch.claim_ms));
  // The least time any batch's source took to learn its claim once it was sent: a floor no batch size
  // changes.
  const double learn = std::max(0.0, batch.claim_ms - batch.claim_send_ms);
  claim_floor_ms_ = claim_floor_known_ ? std::min(claim_floor_ms_, learn) : learn;
  claim_floor_known_ = true;
  if (pause_fixed_ms_ + claim_floor_ms_ > budget_ms_ && !floor_warned_) {
    floor_warned_ = true;
    char text[64];
    std::snprintf(text, sizeof text, "%.0f ms", pause_fixed_ms_ + claim_floor_ms_);
    char budget[32];
    std::snprintf(budget, sizeof budget, "%.0f ms", budget_ms_);
    warning = "a cutover of the source " + source + " takes at least " + text +
              " whatever the batch (most of it the source learning the claim): its stalls cannot stay "
              "under --max-pause " +
              budget;
  }
  if (batch.slots.size() >= 50)
    pause_us_per_slot_ = std::max(pause_us_per_slot_ / 2,
                                  batch.claim_send_ms * 1000 / static_cast<double>(batch.slots.size()));
  if (batch.source_keys < 1000) return warning;
  const double rest = stall - pause_fixed_ms_ - claim_floor_ms_ -
                      static_cast<double>(batch.slots.size()) * pause_us_per_slot_ / 1000;
  const double sample = std::max(0.05, rest * 1000 / static_cast<double>(batch.source_keys));
  // A slower sample counts fully at once (the budget is a promise); a faster one half.
  pause_us_per_key_ = sample > pause_us_per_key_ ? sample : (pause_us_per_key_ + sample) / 2;
  calibrated_ = true;
  return warning;
}

std::vector<Batch> BatchSizer::plan(const std::vector<Slot>& slots,
                                    const std::function<std::uint64_t(Slot)>& keys_of,
                                    const std::function<std::uint64_t(Slot)>& bytes_of,
                                    const std::vector<bool>& claimed) const {
  // Batches of consecutive slots not yet claimed, each small enough that the source's delete of its keys at
  // the claim fits in the pause budget.
  std::vector<Batch> batches;
  Batch current;
  for (const Slot s : slots) {
    if (claimed[s]) continue;
    const auto keys = keys_of(s), bytes = bytes_of(s);
    if (!current.slots.empty() &&
        (!fits(current.keys + keys, current.slots.size() + 1) || current.bytes + bytes > kMaxBatchBytes)) {
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

double BatchSizer::keys_per_batch() const {
  return std::max(500.0, (budget_ms_ * 0.7 - pause_fixed_ms_) * 1000 / pause_us_per_key_);
}

Batch BatchSizer::next_native(const std::vector<Slot>& slots, const std::vector<std::uint64_t>& slot_keys,
                              const std::vector<bool>& claimed) const {
  Batch batch;
  for (const Slot s : slots) {
    if (claimed[s]) continue;
    if (!batch.slots.empty() && static_cast<double>(batch.keys + slot_keys[s]) > native_batch_keys_) break;
    batch.slots.push_back(s);
    batch.keys += slot_keys[s];
  }
  return batch;
}

void BatchSizer::learn_native(const Batch& batch) {
  // A batch's stall is the handoff's own pause (noisy: 10 to 60 ms here, whatever the batch) plus the
  // source's delete of its keys (about 2 us a key). A model fitted to so noisy a fixed part shrinks batches
  // for nothing, and every batch costs a migration's fixed time (25 to 130 ms): so the batch size is steered
  // by the stalls themselves. Well within the budget: half as many keys again; over it: back by 40%.
  const double size = static_cast<double>(std::max<std::uint64_t>(batch.source_keys, 1));
  native_floor_ms_ = native_calibrated_ ? std::min(native_floor_ms_, batch.pause_ms) : batch.pause_ms;
  native_calibrated_ = true;
  if (batch.pause_ms <= budget_ms_ * 0.7)
    native_batch_keys_ = std::max(native_batch_keys_, size * 1.5);
  else if (batch.pause_ms > budget_ms_)
    native_batch_keys_ = std::max(1000.0, std::min(native_batch_keys_, size) * 0.6);
}

}  // namespace slotshift
