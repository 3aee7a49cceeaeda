#pragma once
// SHA-256 (FIPS 180-4), for identifying files by content (e.g. the tokenizer a token file was made with).
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace cepe {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  // The digest of everything passed to update(); the object must not be updated afterwards.
  std::array<uint8_t, 32> finish();
  // finish() as 64 lowercase hex digits.
  std::string finish_hex();

 private:
  void block(const uint8_t* p);

  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buf_{};
  size_t buf_len_ = 0;
  uint64_t total_ = 0;  // bytes hashed
};

std::string sha256_hex(std::string_view data);
// The digest of a whole file, read in pieces; throws cepe::Error naming `path` when it cannot be read.
std::string sha256_file_hex(const std::string& path);

}  // namespace cepe
