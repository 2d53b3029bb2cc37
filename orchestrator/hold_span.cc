#include "orchestrator/hold_span.h"

#include <algorithm>
#include <cmath>

namespace slotshift {

std::size_t hold_span(const HoldSpanRule& rule, double fleet_call_ms, std::optional<double> batch_span_ms,
                      std::size_t after) {
  const std::size_t most = after + 1;
  if (rule.hold_batches > 0) return std::min(static_cast<std::size_t>(rule.hold_batches), most);
  // With --fence proxy the holds are the fence: a proxy that restarts loses its holds, and a hold trusted for
  // several batches would leave its clients' writes unfenced for all of them. Auto keeps that to one batch.
  if (rule.fence_proxy) return 1;
  // A group pays only where a call costs more than a batch: a large fleet, or a far one. So a hold spans as
  // many batches as fit, each at the larger of the pause budget and the last batch's span, in twice the time
  // of the last call: the group's clients then wait at most about two calls and two calls' worth of batches,
  // where one batch's wait two calls and its own (with 2 proxies a call takes a few ms, and every hold is one
  // batch's).
  // Before the first batch nothing of a batch's span is known but that a first one takes tens of ms (its
  // claim is the slowest of a move: 30-45 ms of the pause on the demo's cluster): 50 ms is taken for it. And
  // the first hold's call is the warm-up's (ProxyControl::warm_up(), which opens the connections too).
  constexpr double kFirstBatchMs = 50;
  // (A batch's span is never 0, its pause, claim and verify taking milliseconds: 0.1 ms keeps the division
  // finite should the clock say otherwise.)
  const double per_batch = std::max({rule.max_pause_ms, batch_span_ms.value_or(kFirstBatchMs), 0.1});
  const double fit = std::floor(2 * fleet_call_ms / per_batch);
  auto span = static_cast<std::size_t>(std::clamp(fit, 1.0, static_cast<double>(kMaxHoldSpan)));
  // A group that would leave its source one batch takes that one too: alone, it would cost the fleet a call
  // of its own (the hold carried to it), and under the group its clients wait one batch more. (Not past the
  // most a hold spans: that last batch then holds on its own.)
  if (span > 1 && span == after && span < kMaxHoldSpan) ++span;
  return std::min(span, most);
}

}  // namespace slotshift
