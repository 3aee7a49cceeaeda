// The `--request REQ.json` reader of `cepe forward` / `cepe generate` (tools/request.cpp).
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
  return 0;
}
