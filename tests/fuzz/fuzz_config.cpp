// config.json: the project's JSON reader, then the CEPE config parser; an accepted config must survive
// cepe_config_to_json and parse back to the same JSON (the round trip config.h promises).
#include <cstddef>
#include <cstdint>

#include "cepe/config.h"
#include "core/json_file.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static cepe::fuzz::InputFile file("config");
  const std::string& path = file.write(data, size);
  cepe::fuzz::expect_errors([&] {
    const nlohmann::json j = cepe::read_json_file(path, "config.json");
    const cepe::CepeConfig c = cepe::parse_cepe_config(j, path);
    const nlohmann::json once = cepe::cepe_config_to_json(c);
    bool round_trip = false;
    try {
      round_trip = cepe::cepe_config_to_json(cepe::parse_cepe_config(once, "round trip")) == once;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "fuzz: the written config is rejected: %s\n", e.what());
    }
    cepe::fuzz::fuzz_check(round_trip, "parse_cepe_config(cepe_config_to_json(c)) gives c back");
  });
  return 0;
}
