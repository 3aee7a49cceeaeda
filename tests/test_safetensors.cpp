// safetensors reader/writer, the memory mapping under it and the atomic writer.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cepe/error.h"
#include "cepe/safetensors.h"
#include "cepe/tensor.h"
#include "core/atomic_file.h"
#include "core/mapped_file.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace cepe;

namespace {

const std::string kFixture = CEPE_TEST_DATA "/cepe-tiny-a/model.safetensors";

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

uint64_t read_le64(const std::string& bytes) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(bytes[i]);
  return v;
}

// A safetensors file from raw header text and data bytes (no padding: the reader must not need it).
std::string assemble(const std::string& header, const std::string& data) { return le64(header.size()) + header + data; }

// The fixture split into its parsed header and its data section.
struct Parts {
  json header;
  std::string data;
};

Parts split_fixture() {
  const std::string bytes = read_bytes(kFixture);
  const uint64_t n = read_le64(bytes);
  return {json::parse(bytes.substr(8, n)), bytes.substr(8 + n)};
}

std::vector<fs::path> dir_entries(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename());
  return out;
}

// Per-test scratch directory, removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "cepe_st_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

// Expects SafeTensors::open(path) to throw a cepe::Error whose message starts with the path and
// contains every keyword.
void expect_open_error(const std::string& path, std::initializer_list<std::string> keywords) {
  try {
    SafeTensors::open(path);
    ADD_FAILURE() << "no error for " << path;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path, 0), 0u) << "message does not start with the path: " << msg;
    for (const auto& k : keywords) EXPECT_NE(msg.find(k), std::string::npos) << "'" << k << "' missing from: " << msg;
  }
}

template <class T>
Tensor make(DType dtype, Shape shape, const std::vector<T>& values) {
  Tensor t = Tensor::empty(dtype, std::move(shape));
  EXPECT_EQ(t.nbytes(), values.size() * sizeof(T));
  if (!values.empty()) std::memcpy(t.raw(), values.data(), t.nbytes());
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// MappedFile

class MappedFileTest : public TempDirTest {};

TEST_F(MappedFileTest, MapsWholeFile) {
  auto m = MappedFile::open(kFixture);
  const std::string bytes = read_bytes(kFixture);
  ASSERT_EQ(m->size(), bytes.size());
  EXPECT_EQ(m->path(), kFixture);
  EXPECT_EQ(std::memcmp(m->data(), bytes.data(), bytes.size()), 0);
}

TEST_F(MappedFileTest, EmptyFileMapsToNothing) {
  write_bytes(file("empty"), "");
  auto m = MappedFile::open(file("empty"));
  EXPECT_EQ(m->size(), 0u);
  EXPECT_EQ(m->data(), nullptr);
}

TEST_F(MappedFileTest, MissingFileNamesPathAndReason) {
  try {
    MappedFile::open(file("nope"));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(file("nope")), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("No such file"), std::string::npos) << e.what();
  }
}

TEST_F(MappedFileTest, DirectoryIsRefused) {
  try {
    MappedFile::open(dir_.string());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir_.string()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("directory"), std::string::npos) << e.what();
  }
}

TEST_F(MappedFileTest, UnreadableFileIsRefused) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads files regardless of permissions";
  write_bytes(file("secret"), "x");
  ASSERT_EQ(::chmod(file("secret").c_str(), 0), 0);
  EXPECT_THROW(MappedFile::open(file("secret")), Error);
}

// ---------------------------------------------------------------------------------------------------
// Atomic writes

class AtomicFileTest : public TempDirTest {};

TEST_F(AtomicFileTest, WritesAndLeavesNoTempFile) {
  write_text_atomic(file("a.txt"), "hello\n");
  EXPECT_EQ(read_bytes(file("a.txt")), "hello\n");
  write_text_atomic(file("a.txt"), "replaced");
  EXPECT_EQ(read_bytes(file("a.txt")), "replaced");
  EXPECT_EQ(dir_entries(dir_), std::vector<fs::path>{"a.txt"});
}

TEST_F(AtomicFileTest, MissingDirectoryThrowsAndLeavesNothing) {
  const std::string path = file("no/such/dir/a.txt");
  try {
    write_text_atomic(path, "x");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(path, 0), 0u) << e.what();
  }
  EXPECT_TRUE(dir_entries(dir_).empty());
}

TEST_F(AtomicFileTest, WriterExceptionKeepsOldFile) {
  write_text_atomic(file("a.txt"), "old");
  try {
    write_file_atomic(file("a.txt"), [](std::FILE* f) {
      std::fputs("partial", f);
      throw Error("boom");
    });
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(file("a.txt"), 0), 0u) << e.what();
    EXPECT_NE(std::string(e.what()).find("boom"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_bytes(file("a.txt")), "old");
  EXPECT_EQ(dir_entries(dir_), std::vector<fs::path>{"a.txt"});
}

TEST_F(AtomicFileTest, RenameOntoDirectoryFailsCleanly) {
  fs::create_directory(dir_ / "target");
  EXPECT_THROW(write_text_atomic(file("target"), "x"), Error);
  EXPECT_EQ(dir_entries(dir_), std::vector<fs::path>{"target"});
  EXPECT_TRUE(fs::is_directory(dir_ / "target"));
}

// ---------------------------------------------------------------------------------------------------
// SafeTensors: writing and reading back

class SafeTensorsTest : public TempDirTest {};

TEST_F(SafeTensorsTest, RoundTripIsBitExact) {
  const float inf = std::numeric_limits<float>::infinity();
  std::map<std::string, Tensor> in;
  in["f32"] = make<float>(DType::F32, {2, 3}, {1.5f, -0.0f, inf, -inf, std::nanf(""), 1e-42f});
  in["f32_odd"] = make<float>(DType::F32, {3}, {1, 2, 3});  // 12 bytes: the next F32 is only 4-aligned
  in["bf16"] = make<uint16_t>(DType::BF16, {5}, {0x3f80, 0x8000, 0x7f80, 0x7fc1, 0x0001});
  in["f16"] = make<uint16_t>(DType::F16, {1, 3}, {0x3c00, 0xfc00, 0x7e01});
  in["i64"] = make<int64_t>(DType::I64, {3}, {std::numeric_limits<int64_t>::min(), -1, std::numeric_limits<int64_t>::max()});
  in["i32"] = make<int32_t>(DType::I32, {2, 2}, {-7, 0, 1 << 30, std::numeric_limits<int32_t>::min()});
  in["u8"] = make<uint8_t>(DType::U8, {3}, {0, 128, 255});
  in["empty"] = Tensor::empty(DType::F32, {0, 4});
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "ünïcode \"quoted\""}};

  const std::string path = file("rt.safetensors");
  save_safetensors(path, in, meta);
  EXPECT_EQ(dir_entries(dir_), std::vector<fs::path>{"rt.safetensors"});

  // Layout: 8-aligned header, gap-free data exactly filling the file, each tensor aligned.
  const std::string bytes = read_bytes(path);
  const uint64_t n = read_le64(bytes);
  EXPECT_EQ(n % 8, 0u);
  const json header = json::parse(bytes.substr(8, n));
  size_t total = 0;
  for (const auto& [name, t] : in) total += t.nbytes();
  EXPECT_EQ(bytes.size(), 8 + n + total);

  SafeTensors st = SafeTensors::open(path);
  EXPECT_EQ(st.metadata(), meta);
  std::vector<std::string> expected_names;
  for (const auto& [name, t] : in) expected_names.push_back(name);
  EXPECT_EQ(st.names(), expected_names);

  std::vector<std::pair<size_t, size_t>> ranges;
  for (const auto& [name, t] : in) {
    SCOPED_TRACE(name);
    const TensorInfo& ti = st.info(name);
    EXPECT_EQ(ti.name, name);
    EXPECT_EQ(ti.dtype, t.dtype());
    EXPECT_EQ(ti.shape, t.shape());
    EXPECT_EQ(ti.end - ti.begin, t.nbytes());
    EXPECT_EQ(ti.begin % dtype_size(ti.dtype), 0u);
    ranges.emplace_back(ti.begin, ti.end);
    const Tensor back = st.get(name);
    EXPECT_TRUE(same_bytes(back, t));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(back.raw()) % dtype_size(back.dtype()), 0u);
  }
  std::sort(ranges.begin(), ranges.end());
  size_t pos = 0;
  for (const auto& [b, e] : ranges) {
    EXPECT_EQ(b, pos);  // the reference reader rejects gaps
    pos = e;
  }
  EXPECT_EQ(pos, total);
  // Largest elements first.
  EXPECT_EQ(st.info("i64").begin, 0u);
  EXPECT_EQ(st.info("u8").end, total);
}

TEST_F(SafeTensorsTest, NoMetadataWritesNoMetadataKey) {
  const std::string path = file("m.safetensors");
  save_safetensors(path, {{"x", make<float>(DType::F32, {1}, {2.0f})}});
  const std::string bytes = read_bytes(path);
  EXPECT_FALSE(json::parse(bytes.substr(8, read_le64(bytes))).contains("__metadata__"));
  SafeTensors st = SafeTensors::open(path);
  EXPECT_TRUE(st.metadata().empty());
  EXPECT_EQ(st.get("x").f32()[0], 2.0f);
}

TEST_F(SafeTensorsTest, EmptyFileOfTensors) {
  const std::string path = file("none.safetensors");
  save_safetensors(path, {});
  SafeTensors st = SafeTensors::open(path);
  EXPECT_TRUE(st.names().empty());
}

TEST_F(SafeTensorsTest, ViewsOutliveTheFileAndItsReplacement) {
  const std::string path = file("v.safetensors");
  save_safetensors(path, {{"x", make<float>(DType::F32, {2}, {1.0f, 2.0f})}});
  Tensor view;
  {
    SafeTensors st = SafeTensors::open(path);
    view = st.get("x");
  }
  // Rewriting in place (e.g. re-saving a loaded checkpoint) must not disturb existing views.
  save_safetensors(path, {{"x", view}, {"y", make<float>(DType::F32, {1}, {3.0f})}});
  EXPECT_EQ(view.f32()[0], 1.0f);
  EXPECT_EQ(view.f32()[1], 2.0f);
  SafeTensors st = SafeTensors::open(path);
  EXPECT_EQ(st.get("y").f32()[0], 3.0f);
  EXPECT_TRUE(same_bytes(st.get("x"), view));
}

TEST_F(SafeTensorsTest, SaveRejectsBadInput) {
  const std::string path = file("bad.safetensors");
  EXPECT_THROW(save_safetensors(path, {{"__metadata__", Tensor::zeros(DType::F32, {1})}}), Error);
  EXPECT_THROW(save_safetensors(path, {{"undefined", Tensor()}}), Error);
  EXPECT_THROW(save_safetensors(path, {{"bad\xff utf8", Tensor::zeros(DType::F32, {1})}}), Error);
  EXPECT_THROW(save_safetensors(file("missing/dir.safetensors"), {{"x", Tensor::zeros(DType::F32, {1})}}), Error);
  EXPECT_TRUE(dir_entries(dir_).empty());
}

TEST_F(SafeTensorsTest, ReadsFixture) {
  SafeTensors st = SafeTensors::open(kFixture);
  EXPECT_EQ(st.path(), kFixture);
  EXPECT_EQ(st.metadata().at("format"), "pt");
  const std::vector<std::string> names = st.names();
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  ASSERT_TRUE(st.has("model.embed_tokens.weight"));
  EXPECT_FALSE(st.has("model.embed_tokens"));

  const TensorInfo& emb = st.info("model.embed_tokens.weight");
  EXPECT_EQ(emb.dtype, DType::F32);
  EXPECT_EQ(emb.shape, (Shape{512, 64}));
  EXPECT_EQ(st.info("model.norm.weight").shape, (Shape{64}));
  EXPECT_EQ(st.info("model.layers.0.mlp.down_proj.weight").shape, (Shape{64, 160}));
  EXPECT_EQ(st.info("encoder.layers.0.mlp.gate_proj.weight").shape, (Shape{128, 64}));

  // The view is the file's bytes, without a copy.
  const Tensor t = st.get("model.embed_tokens.weight");
  EXPECT_EQ(t.shape(), (Shape{512, 64}));
  EXPECT_NE(t.owner(), nullptr);
  const std::string bytes = read_bytes(kFixture);
  const size_t data_start = 8 + read_le64(bytes);
  EXPECT_EQ(std::memcmp(t.raw(), bytes.data() + data_start + emb.begin, t.nbytes()), 0);
  for (int64_t i = 0; i < t.numel(); ++i) ASSERT_TRUE(std::isfinite(t.f32()[i]));
}

TEST_F(SafeTensorsTest, FixtureSurvivesRewrite) {
  SafeTensors st = SafeTensors::open(kFixture);
  std::map<std::string, Tensor> all;
  for (const auto& name : st.names()) all[name] = st.get(name);
  save_safetensors(file("copy.safetensors"), all, st.metadata());
  SafeTensors copy = SafeTensors::open(file("copy.safetensors"));
  EXPECT_EQ(copy.names(), st.names());
  EXPECT_EQ(copy.metadata(), st.metadata());
  for (const auto& name : st.names()) EXPECT_TRUE(same_bytes(copy.get(name), st.get(name))) << name;
}

TEST_F(SafeTensorsTest, UnknownNameIsAnError) {
  SafeTensors st = SafeTensors::open(kFixture);
  for (auto fn : {+[](const SafeTensors& s) { s.info("nope"); }, +[](const SafeTensors& s) { s.get("nope"); }}) {
    try {
      fn(st);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), kFixture + ": no tensor named 'nope'");
    }
  }
}

TEST_F(SafeTensorsTest, GapsAndMisalignedTensorsAreRead) {
  // "b" starts at an odd offset (a copy is made) and a gap precedes "c".
  const std::string header =
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[1,9]},)"
      R"("c":{"dtype":"I32","shape":[1],"data_offsets":[12,16]}})";
  std::string data(16, '\0');
  const float b[2] = {1.25f, -3.0f};
  const int32_t c = 42;
  data[0] = 7;
  std::memcpy(&data[1], b, 8);
  std::memcpy(&data[12], &c, 4);
  write_bytes(file("gap.safetensors"), assemble(header, data));
  SafeTensors st = SafeTensors::open(file("gap.safetensors"));
  EXPECT_EQ(st.get("a").data<uint8_t>()[0], 7);
  EXPECT_EQ(st.get("b").f32()[0], 1.25f);
  EXPECT_EQ(st.get("b").f32()[1], -3.0f);
  EXPECT_EQ(st.get("c").data<int32_t>()[0], 42);
}

// ---------------------------------------------------------------------------------------------------
// SafeTensors: rejected input. Each case corrupts a copy of the fixture.

class SafeTensorsBadInput : public TempDirTest {
 protected:
  // Writes the fixture's data under a modified header.
  std::string with_header(const json& header, const std::string& name = "bad.safetensors") {
    const std::string path = file(name);
    write_bytes(path, assemble(header.dump(), parts_.data));
    return path;
  }
  std::string with_header_text(const std::string& text, const std::string& name = "bad.safetensors") {
    const std::string path = file(name);
    write_bytes(path, assemble(text, parts_.data));
    return path;
  }
  // The fixture with tensor `name`'s field `key` replaced.
  std::string with_field(const std::string& name, const std::string& key, const json& value) {
    json h = parts_.header;
    h[name][key] = value;
    return with_header(h);
  }

  Parts parts_ = split_fixture();
  const std::string emb_ = "model.embed_tokens.weight";
};

TEST_F(SafeTensorsBadInput, ShorterThan8Bytes) {
  const std::string bytes = read_bytes(kFixture);
  for (size_t len : {0, 1, 7}) {
    SCOPED_TRACE(len);
    write_bytes(file("short"), bytes.substr(0, len));
    expect_open_error(file("short"), {"shorter than 8 bytes", "truncated"});
  }
}

TEST_F(SafeTensorsBadInput, TruncatedInHeader) {
  const std::string bytes = read_bytes(kFixture);
  const uint64_t n = read_le64(bytes);
  for (size_t len : {size_t{8}, size_t{9}, size_t{100}, size_t(8 + n - 1)}) {
    SCOPED_TRACE(len);
    write_bytes(file("t"), bytes.substr(0, len));
    expect_open_error(file("t"), {"header length " + std::to_string(n), "truncated"});
  }
}

TEST_F(SafeTensorsBadInput, TruncatedInData) {
  const std::string bytes = read_bytes(kFixture);
  const uint64_t n = read_le64(bytes);
  for (size_t len : {size_t(8 + n), size_t(8 + n + 1000), bytes.size() / 2}) {
    SCOPED_TRACE(len);
    write_bytes(file("t"), bytes.substr(0, len));
    expect_open_error(file("t"), {"truncated", "tensor '", "data_offsets"});
  }
  // Losing the last byte names the tensor stored last.
  write_bytes(file("t"), bytes.substr(0, bytes.size() - 1));
  expect_open_error(file("t"), {"truncated", "'model.norm.weight'"});
}

TEST_F(SafeTensorsBadInput, HeaderLengthZero) {
  std::string bytes = read_bytes(kFixture);
  bytes.replace(0, 8, le64(0));
  write_bytes(file("z"), bytes);
  expect_open_error(file("z"), {"header length is 0"});
}

TEST_F(SafeTensorsBadInput, HeaderLengthAbsurd) {
  std::string bytes = read_bytes(kFixture);
  for (uint64_t n : {~uint64_t{0}, uint64_t{1} << 40, uint64_t{200} << 20, read_le64(bytes) ^ (uint64_t{1} << 63)}) {
    SCOPED_TRACE(n);
    bytes.replace(0, 8, le64(n));
    write_bytes(file("h"), bytes);
    expect_open_error(file("h"), {"absurd", std::to_string(n)});
  }
}

TEST_F(SafeTensorsBadInput, HeaderLengthLargerThanFile) {
  std::string bytes = read_bytes(kFixture);
  bytes.replace(0, 8, le64(bytes.size()));
  write_bytes(file("h"), bytes);
  expect_open_error(file("h"), {"header length", "larger than", "truncated"});
}

TEST_F(SafeTensorsBadInput, HeaderLengthTooSmallCutsTheJson) {
  std::string bytes = read_bytes(kFixture);
  bytes.replace(0, 8, le64(read_le64(bytes) - 100));
  write_bytes(file("h"), bytes);
  expect_open_error(file("h"), {"header: malformed JSON", "parse error"});
}

TEST_F(SafeTensorsBadInput, BrokenJson) {
  for (const std::string text : {R"({"a": )", R"({"a": {"dtype": "F32",}})", "not json", "{\"bad\xff\": 1}"}) {
    SCOPED_TRACE(text);
    expect_open_error(with_header_text(text), {"header: malformed JSON", "parse error"});
  }
}

TEST_F(SafeTensorsBadInput, HeaderNotAnObject) {
  for (const std::string text : {"[1, 2]", "42", "\"str\"", "null"}) {
    SCOPED_TRACE(text);
    expect_open_error(with_header_text(text), {"not a JSON object"});
  }
}

TEST_F(SafeTensorsBadInput, DuplicateTensorName) {
  const std::string entry = R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  expect_open_error(with_header_text("{\"w\":" + entry + ",\"w\":" + entry + "}"), {"duplicate", "'w'"});
}

TEST_F(SafeTensorsBadInput, EntryNotAnObject) {
  json h = parts_.header;
  h[emb_] = json::array({1, 2});
  expect_open_error(with_header(h), {"'" + emb_ + "'", "not a JSON object"});
}

TEST_F(SafeTensorsBadInput, MissingFields) {
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    SCOPED_TRACE(key);
    json h = parts_.header;
    h[emb_].erase(key);
    expect_open_error(with_header(h), {"'" + emb_ + "'", std::string("missing '") + key + "'"});
  }
}

TEST_F(SafeTensorsBadInput, IllTypedFields) {
  expect_open_error(with_field(emb_, "dtype", 4), {"'" + emb_ + "'", "'dtype' is not a string"});
  expect_open_error(with_field(emb_, "shape", "512x64"), {"'" + emb_ + "'", "'shape' is not an array"});
  expect_open_error(with_field(emb_, "shape", json::object()), {"'" + emb_ + "'", "'shape' is not an array"});
  expect_open_error(with_field(emb_, "data_offsets", json::object({{"begin", 0}})), {"'" + emb_ + "'", "data_offsets"});
}

TEST_F(SafeTensorsBadInput, UnknownDtype) {
  for (const char* dt : {"F64", "f32", "Q4_0", ""}) {
    SCOPED_TRACE(dt);
    expect_open_error(with_field(emb_, "dtype", dt), {"'" + emb_ + "'", "unknown", std::string("'") + dt + "'"});
  }
}

TEST_F(SafeTensorsBadInput, BadDims) {
  for (const json& shape : {json{-512, -64}, json{512.0, 64}, json{512, 0.5}, json{"512", 64}, json{512, nullptr}}) {
    SCOPED_TRACE(shape.dump());
    expect_open_error(with_field(emb_, "shape", shape), {"'" + emb_ + "'", "shape dimension", "non-negative integer"});
  }
}

TEST_F(SafeTensorsBadInput, BadDataOffsets) {
  for (const json& off : {json::array({0}), json{0, 4, 8}, json{-4, 131072}, json{0.0, 131072}, json{"0", 131072},
                          json::array()}) {
    SCOPED_TRACE(off.dump());
    expect_open_error(with_field(emb_, "data_offsets", off), {"'" + emb_ + "'", "'data_offsets' must be 2 non-negative integers"});
  }
  expect_open_error(with_field(emb_, "data_offsets", json{131072, 0}), {"'" + emb_ + "'", "begin > end"});
}

TEST_F(SafeTensorsBadInput, OffsetsPastTheEnd) {
  const uint64_t end = parts_.data.size();
  expect_open_error(with_field(emb_, "data_offsets", json{end, end + 131072}), {"'" + emb_ + "'", "truncated"});
  expect_open_error(with_field(emb_, "data_offsets", json{end - 131071, end + 1}), {"'" + emb_ + "'", "truncated"});
}

TEST_F(SafeTensorsBadInput, ShapeDisagreesWithBytes) {
  expect_open_error(with_field(emb_, "shape", json{512, 63}),
                    {"'" + emb_ + "'", "expected 129024 bytes, found 131072"});
  expect_open_error(with_field(emb_, "dtype", "BF16"), {"'" + emb_ + "'", "expected 65536 bytes, found 131072"});
  expect_open_error(with_field(emb_, "shape", json::array()), {"'" + emb_ + "'", "expected 4 bytes, found 131072"});
}

TEST_F(SafeTensorsBadInput, ByteCountOverflow) {
  const uint64_t big = uint64_t{1} << 62;
  expect_open_error(with_field(emb_, "shape", json{big, big}), {"'" + emb_ + "'", "overflow"});
  expect_open_error(with_field(emb_, "shape", json{big / 2, 2}), {"'" + emb_ + "'", "overflow"});  // numel fits, bytes don't
  expect_open_error(with_field(emb_, "shape", json{~uint64_t{0}}), {"'" + emb_ + "'", "shape dimension"});
}

TEST_F(SafeTensorsBadInput, OverlappingTensors) {
  json h = parts_.header;
  // lm_head.weight is stored just before model.embed_tokens.weight; slide it halfway into it.
  const uint64_t begin = h[emb_]["data_offsets"][0].get<uint64_t>() - 131072 / 2;
  h["lm_head.weight"]["data_offsets"] = json{begin, begin + 131072};
  expect_open_error(with_header(h), {"overlap", "'lm_head.weight'", "'" + emb_ + "'"});
  // Two tensors on the very same bytes.
  h = parts_.header;
  h["model.norm.weight"]["data_offsets"] = h["encoder.norm.weight"]["data_offsets"];
  expect_open_error(with_header(h), {"overlap", "'model.norm.weight'", "'encoder.norm.weight'"});
}

TEST_F(SafeTensorsBadInput, MetadataNotAnObjectOfStrings) {
  for (const json& meta : {json("pt"), json::array({"a"}), json{{"format", 1}}, json{{"format", json::object()}}}) {
    SCOPED_TRACE(meta.dump());
    json h = parts_.header;
    h["__metadata__"] = meta;
    expect_open_error(with_header(h), {"__metadata__", "not an object of strings"});
  }
}

TEST_F(SafeTensorsBadInput, MissingFileAndDirectory) {
  expect_open_error(file("absent.safetensors"), {"No such file"});
  expect_open_error(dir_.string(), {"directory"});
}
