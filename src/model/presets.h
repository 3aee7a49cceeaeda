#pragma once
// Named model shapes for synthetic checkpoints (`cepe init --preset NAME`): the released CEPE shape and
// small ones for tests and quick experiments.
#include <string>
#include <vector>

#include "cepe/config.h"

namespace cepe {

struct ModelPreset {
  std::string name;
  std::string description;
  CepeConfig config;
};

// cepe-llama2-7b (the released CEPE-LLaMA-2-7B: LLaMA-2-7B decoder with cross-attention in all 32 layers
// + the 435M LLaMA-MLM-Large encoder, 8.516 B parameters, 669 tensors), cepe-small (a 12-layer, 768-wide
// decoder + a 4-layer, 384-wide encoder), cepe-tiny (a few MB, for tests).
const std::vector<ModelPreset>& model_presets();
// The preset's config; an unknown name is a cepe::Error listing the known ones.
const CepeConfig& preset_config(const std::string& name);

}  // namespace cepe
