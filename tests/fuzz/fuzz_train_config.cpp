// The trainer's JSON readers: a training config (`cepe train --config`, src/train/trainer.cpp) and a checkpoint's
// trainer_state.json (read on --resume). An accepted config must be one the trainer can run (positive steps and
// batch, train streams with files, a known stage); an accepted state a usable one.
#include <cstddef>
#include <cstdint>

#include "core/json_file.h"
#include "fuzz_common.h"
#include "train/trainer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static cepe::fuzz::InputFile file("train_config");
  const std::string& path = file.write(data, size);
  cepe::fuzz::expect_errors([&] {
    const cepe::train::TrainConfig c = cepe::train::load_train_config(path);
    cepe::fuzz::fuzz_check(c.steps > 0 && c.batch_size > 0 && c.grad_accum > 0 && !c.output_dir.empty(),
                           "an accepted config has steps, batch and an output_dir");
    cepe::fuzz::fuzz_check(!c.data.train.empty() && c.data.seq_len > 0, "an accepted config has training data");
    for (const auto& s : c.data.train) cepe::fuzz::fuzz_check(!s.files.empty() && !s.layout.empty(), "streams have files and a layout");
  });
  cepe::fuzz::expect_errors([&] {
    const cepe::train::TrainerState st =
        cepe::train::parse_trainer_state(cepe::read_json_file(path, "trainer state"), path);
    cepe::fuzz::fuzz_check(st.step >= 0 && st.config.is_object(), "an accepted state has a step and a config");
  });
  return 0;
}
