// The `--request REQ.json` readers of `cepe forward` / `cepe generate` and of `cepe grad` (tools/request.cpp).
#include <cstddef>
#include <cstdint>

#include "fuzz_common.h"
#include "request.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static cepe::fuzz::InputFile file("request");
  const std::string& path = file.write(data, size);
  cepe::fuzz::expect_errors([&] {
    const cepe::cli::Request r = cepe::cli::read_request(path);
    // The arrays must be as large as the shapes say: the model indexes them by shape.
    const auto n = static_cast<size_t>(r.batch * r.len);
    cepe::fuzz::fuzz_check(r.batch >= 0 && r.len >= 0 && r.ids.size() == n && r.mask.size() == n,
                           "ids and mask are [bsz][seq]");
    cepe::fuzz::fuzz_check(r.positions.empty() || r.positions.size() == n, "position_ids are [bsz][seq]");
    if (r.context) {
      const auto& c = *r.context;
      const auto m = static_cast<size_t>(c.batch * c.n_ctx * c.ctx_len);
      cepe::fuzz::fuzz_check(c.ids.size() == m && c.mask.size() == m, "context is [bsz][n_ctx][ctx_len]");
    }
  });
  cepe::fuzz::expect_errors([&] {
    const cepe::cli::GradRequest g = cepe::cli::read_grad_request(path);
    const auto n = static_cast<size_t>(g.forward.batch * g.forward.len);
    cepe::fuzz::fuzz_check(g.labels.size() == n, "labels are [bsz][seq]");
    const auto rows = static_cast<size_t>(g.forward.batch * g.distill_len);
    cepe::fuzz::fuzz_check(g.distill_index.size() == rows * static_cast<size_t>(g.distill_k) &&
                               g.distill_prob.size() == rows * static_cast<size_t>(g.distill_k + 1),
                           "distill_index is [bsz][T][k] and distill_prob [bsz][T][k+1]");
    cepe::fuzz::fuzz_check(g.distill_len <= g.forward.len, "T <= seq");
    for (float p : g.distill_prob) cepe::fuzz::fuzz_check(p >= 0.0f && p <= 1.0f, "probabilities in [0, 1]");
  });
  return 0;
}
