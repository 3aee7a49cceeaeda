// The facts file of the retrieval tasks (`cepe data synth --facts`, `cepe demo`; src/eval/retrieval.cpp): an
// accepted file gives facts with a relation, key and value, none empty and none holding a tab or a newline.
#include <cstddef>
#include <cstdint>

#include "eval/retrieval.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static cepe::fuzz::InputFile file("facts");
  const std::string& path = file.write(data, size);
  cepe::fuzz::expect_errors([&] {
    const std::vector<cepe::eval::Fact> facts = cepe::eval::load_facts(path);
    cepe::fuzz::fuzz_check(!facts.empty(), "an accepted file has facts");
    for (const auto& f : facts) {
      cepe::fuzz::fuzz_check(!f.relation.empty() && !f.key.empty() && !f.value.empty(), "no empty field");
      for (const std::string* s : {&f.relation, &f.key, &f.value})
        cepe::fuzz::fuzz_check(s->find('\t') == std::string::npos && s->find('\n') == std::string::npos,
                               "no tab or newline inside a field");
      cepe::fuzz::fuzz_check(f.question().size() > f.key.size(), "a question can be made");
    }
  });
  return 0;
}
