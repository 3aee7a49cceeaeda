// Encoded-context files (cepe::load_context) against the tiny fixture model, then one decoder step that
// reads the loaded context: the loader's shape checks are what keeps that step in bounds.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "cepe/context.h"
#include "cepe/model.h"
#include "fuzz_common.h"

namespace {

// Loaded once: the seeds' encoder fingerprint is this model's (tests/data/cepe-tiny-a unless overridden).
const cepe::CepeModel& model() {
  static const std::shared_ptr<cepe::CepeModel> m = [] {
    const char* dir = std::getenv("CEPE_FUZZ_MODEL_DIR");
    return cepe::CepeModel::load(dir && *dir ? dir : CEPE_FUZZ_MODEL_DIR);
  }();
  return *m;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  model();  // a broken fixture should stop the run at once, not look like a finding per input
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static cepe::fuzz::InputFile file("context");
  const std::string& path = file.write(data, size);
  cepe::fuzz::expect_errors([&] {
    cepe::EncodedContext ctx = cepe::load_context(path, model());
    for (const cepe::Tensor& s : ctx.states) cepe::fuzz::touch(s.raw(), s.nbytes());
    cepe::fuzz::touch(ctx.mask.raw(), ctx.mask.nbytes());
    if (ctx.batch > 4) return;  // a step costs batch x keys; larger batches only make the run slow
    const std::vector<int32_t> ids(static_cast<size_t>(ctx.batch),
                                    static_cast<int32_t>(model().config().decoder.bos_token_id));
    const std::vector<int64_t> pos(ids.size(), 0);
    const cepe::Tensor logits = model().decode(ids.data(), ctx.batch, 1, pos.data(), nullptr, nullptr, &ctx);
    cepe::fuzz::touch(logits.raw(), logits.nbytes());
  });
  return 0;
}
