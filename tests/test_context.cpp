// Encoded contexts: chunking, save -> load (bit-exact), fingerprint and file checks, combining contexts.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "cepe/context.h"
#include "cepe/model.h"
#include "golden.h"

namespace cepe {
namespace {

namespace fs = std::filesystem;
using testing::data_dir;
using testing::Golden;

class ContextFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cepe-ctx-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& n) const { return (dir_ / n).string(); }
  fs::path dir_;
};

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

TEST(Chunking, CutsDocumentsAndPadsTheLastChunk) {
  ContextChunks c = chunk_documents({{1, 2, 3, 4, 5}, {6, 7}}, 2, 0);
  EXPECT_EQ(c.n_ctx, 4);  // [1 2] [3 4] [5 .] [6 7]
  EXPECT_EQ(c.ids, (std::vector<int32_t>{1, 2, 3, 4, 5, 0, 6, 7}));
  EXPECT_EQ(c.mask, (std::vector<uint8_t>{1, 1, 1, 1, 1, 0, 1, 1}));
}

TEST_F(ContextFile, SaveLoadIsBitExactInBothDtypes) {
  for (const char* name : {"cepe-tiny-a", "ref-multi-hid"}) {
    auto m = CepeModel::load(data_dir(name));
    Golden g(data_dir(name));
    for (DType dt : {DType::F32, DType::BF16}) {
      EncodeOptions o;
      o.state_dtype = dt;
      EncodedContext ctx = m->encode(g.chunks, g.ids.data(), g.mask.data(), g.len, o);
      save_context(path("c.safetensors"), ctx, *m, {"a.txt"});
      EncodedContext back = load_context(path("c.safetensors"), *m);
      ASSERT_EQ(back.states.size(), ctx.states.size());
      for (size_t e = 0; e < ctx.states.size(); ++e) EXPECT_TRUE(same_bytes(ctx.states[e], back.states[e]));
      EXPECT_TRUE(same_bytes(ctx.mask, back.mask));
      EXPECT_EQ(back.n_ctx, ctx.n_ctx);
      EXPECT_EQ(back.ctx_len, ctx.ctx_len);
      // And the decoder reads it exactly as the fresh context.
      Tensor a = m->decode(g.ids.data(), g.batch, g.len, g.positions.data(), g.mask.data(), nullptr, &ctx);
      Tensor b = m->decode(g.ids.data(), g.batch, g.len, g.positions.data(), g.mask.data(), nullptr, &back);
      EXPECT_TRUE(same_bytes(a, b)) << name;
    }
  }
}

TEST_F(ContextFile, WrongModelIsAClearError) {
  auto a = CepeModel::load(data_dir("cepe-tiny-a"));
  auto b = CepeModel::load(data_dir("ref-rope-linear"));  // same shapes as tiny-a's encoder? different weights
  EXPECT_NE(a->encoder_fingerprint(), b->encoder_fingerprint());
  EXPECT_EQ(a->encoder_fingerprint(), CepeModel::load(data_dir("cepe-tiny-a"))->encoder_fingerprint());
  Golden g(data_dir("cepe-tiny-a"));
  save_context(path("c.safetensors"), a->encode(g.chunks), *a);
  try {
    load_context(path("c.safetensors"), *b);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("different model"), std::string::npos) << e.what();
  }
}

TEST_F(ContextFile, TruncatedCorruptedOrForeignFilesAreClearErrors) {
  auto m = CepeModel::load(data_dir("cepe-tiny-a"));
  Golden g(data_dir("cepe-tiny-a"));
  save_context(path("c.safetensors"), m->encode(g.chunks), *m);
  std::string bytes;
  {
    std::ifstream in(path("c.safetensors"), std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto expect_error = [&](const std::string& content, const std::string& keyword) {
    {
      std::ofstream out(path("bad.safetensors"), std::ios::binary);
      out << content;
    }
    try {
      load_context(path("bad.safetensors"), *m);
      ADD_FAILURE() << "no error for " << keyword;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(keyword), std::string::npos) << e.what();
    }
  };
  expect_error(bytes.substr(0, bytes.size() - 7), "truncated");
  expect_error(bytes.substr(0, 5), "bad.safetensors");
  std::string corrupt = bytes;
  corrupt[10] = '#';  // inside the JSON header
  expect_error(corrupt, "bad.safetensors");
  // A valid safetensors file that is not a context (the model checkpoint itself).
  std::ifstream ck(data_dir("cepe-tiny-a") + "/model.safetensors", std::ios::binary);
  expect_error(std::string(std::istreambuf_iterator<char>(ck), {}), "not a cepe context file");
}

// Encoding two halves of the chunks separately and combining them gives the logits of encoding all at once.
TEST_F(ContextFile, CombinedContextsEqualOneContext) {
  auto m = CepeModel::load(data_dir("cepe-tiny-a"));
  Golden g(data_dir("cepe-tiny-a"));
  const ContextChunks& all = g.chunks;  // 3 chunks
  ContextChunks first = all, second = all;
  const int64_t L = all.ctx_len;
  first.n_ctx = 1;
  first.ids.resize(static_cast<size_t>(L));
  first.mask.resize(static_cast<size_t>(L));
  second.n_ctx = 2;
  second.ids.erase(second.ids.begin(), second.ids.begin() + L);
  second.mask.erase(second.mask.begin(), second.mask.begin() + L);
  EncodedContext a = m->encode(first), b = m->encode(second), whole = m->encode(all);
  save_context(path("b.safetensors"), b, *m);
  EncodedContext b_file = load_context(path("b.safetensors"), *m);
  EncodedContext comb = concat_contexts({&a, &b_file}, DType::F32);
  EXPECT_EQ(comb.keys(), whole.keys());
  EXPECT_EQ(comb.n_ctx, 3);
  Tensor x = m->decode(g.ids.data(), g.batch, g.len, g.positions.data(), g.mask.data(), nullptr, &whole);
  Tensor y = m->decode(g.ids.data(), g.batch, g.len, g.positions.data(), g.mask.data(), nullptr, &comb);
  float worst = 0;
  for (int64_t i = 0; i < x.numel(); ++i) worst = std::max(worst, std::abs(x.f32()[i] - y.f32()[i]));
  EXPECT_LT(worst, 1e-5f);
}

}  // namespace
}  // namespace cepe
