// cepe::SafeTensors::open on arbitrary bytes, then every tensor's info, view and bytes.
#include <cstddef>
#include <cstdint>

#include "cepe/safetensors.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static cepe::fuzz::InputFile file("safetensors");
  const std::string& path = file.write(data, size);
  cepe::fuzz::expect_errors([&] {
    const cepe::SafeTensors st = cepe::SafeTensors::open(path);
    for (const std::string& name : st.names()) {
      const cepe::TensorInfo& info = st.info(name);
      const cepe::Tensor t = st.get(name);
      // What open() validated must hold for what get() returns.
      cepe::fuzz::fuzz_check(t.dtype() == info.dtype && t.shape() == info.shape, "get() matches info()");
      cepe::fuzz::fuzz_check(t.nbytes() == info.end - info.begin, "tensor bytes == data_offsets range");
      cepe::fuzz::touch(t.raw(), t.nbytes());
    }
    for (const auto& [k, v] : st.metadata()) {
      cepe::fuzz::touch(k.data(), k.size());
      cepe::fuzz::touch(v.data(), v.size());
    }
  });
  return 0;
}
