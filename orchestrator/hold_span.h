// How many batches one hold of the proxies spans (--hold-batches). Pure: it decides from what the move has
// measured so far, so it is unit-tested without a proxy.
//
// A hold spanning several batches (a group) is cut over batch by batch under that one hold, and the group's
// handoffs go to the proxies as one call after its last batch. Each batch merged into a group saves the move
// a call to every proxy, and holds the group's clients through one more batch.
#pragma once

#include <cstddef>
#include <optional>

namespace slotshift {

struct HoldSpanRule {
  int hold_batches = 0;      // --hold-batches: 0 for auto, else the span
  bool fence_proxy = false;  // --fence proxy
  double max_pause_ms = 0;   // --max-pause
};

// The most batches one hold spans.
inline constexpr std::size_t kMaxHoldSpan = 16;

// The batches a hold placed now spans, the batch it is placed for included, when `after` more batches are
// planned behind that one: at least 1, at most kMaxHoldSpan. `fleet_call_ms`: the last call to every proxy
// (the warm-up before the first hold); `batch_span_ms`: the last batch's span, from its hold's answer to the
// end of its verify, less what it waited for calls to every proxy; none before the first batch.
std::size_t hold_span(const HoldSpanRule& rule, double fleet_call_ms, std::optional<double> batch_span_ms,
                      std::size_t after);

}  // namespace slotshift
