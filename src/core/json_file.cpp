#include "core/json_file.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <set>

#include "cepe/error.h"
#include "core/mapped_file.h"

namespace cepe {

using json = nlohmann::json;

namespace {

constexpr size_t kMaxMessageQuote = 160;  // of nlohmann's own description (its "last read" can be megabytes)

std::string bounded(std::string s, size_t max_chars) {
  if (s.size() > max_chars) {
    s.resize(max_chars);
    s += "...";
  }
  return s;
}

// nlohmann's messages start with "[json.exception.parse_error.101] ": that code means nothing to a user.
std::string describe(const std::exception& e) {
  std::string s = e.what();
  if (s.rfind("[json.exception.", 0) == 0) {
    const size_t close = s.find("] ");
    if (close != std::string::npos) s = s.substr(close + 2);
  }
  return bounded(s, kMaxMessageQuote);
}

// Where the parser is, as a field path ("rope_scaling.factor", "input_ids[2][7]"), with the nesting limit and
// duplicate keys enforced as the events stream by. Shared by the DOM parser and the streaming field reader.
class JsonPath {
 public:
  JsonPath(const std::string& origin, size_t max_depth) : origin_(origin), max_depth_(max_depth) {}

  void open(bool object) {
    if (frames_.size() >= max_depth_)
      throw Error(origin_ + ": JSON nested deeper than " + std::to_string(max_depth_) + " levels" + at());
    frames_.push_back(Frame{object, {}, 0, {}});
  }
  void close() {
    if (!frames_.empty()) frames_.pop_back();
    advance();
  }
  void key(const std::string& k) {
    Frame& f = frames_.back();
    if (!f.keys.insert(k).second)
      throw Error(origin_ + ": duplicate key '" + bounded(k, 64) + "'" + at(frames_.size() - 1));
    f.key = k;
  }
  // A scalar value finished: the enclosing array moves on to its next element.
  void advance() {
    if (!frames_.empty() && !frames_.back().object) ++frames_.back().next;
  }
  size_t depth() const { return frames_.size(); }
  // The top-level key being read (the field), or "" outside one.
  const std::string& field() const {
    static const std::string none;
    return frames_.empty() || !frames_[0].object ? none : frames_[0].key;
  }

  // The path through the first `levels` open containers (all by default).
  std::string path(size_t levels = SIZE_MAX) const {
    std::string p;
    for (size_t i = 0; i < std::min(levels, frames_.size()); ++i) {
      const Frame& f = frames_[i];
      if (f.object) {
        if (f.key.empty()) break;
        if (!p.empty()) p += '.';
        p += bounded(f.key, 64);
      } else {
        p += '[' + std::to_string(f.next) + ']';
      }
      if (p.size() > 120) return p + "...";
    }
    return p;
  }
  // " in field 'P'" or "" at the top level.
  std::string at(size_t levels = SIZE_MAX) const {
    const std::string p = path(levels);
    return p.empty() ? std::string() : " in field '" + p + "'";
  }
  const std::string& origin() const { return origin_; }

 private:
  struct Frame {
    bool object;
    std::string key;
    int64_t next;  // arrays: index of the element being read
    std::set<std::string> keys;
  };
  const std::string& origin_;
  size_t max_depth_;
  std::vector<Frame> frames_;
};

[[noreturn]] void throw_parse_error(const JsonPath& path, const std::exception& e) {
  const bool range = dynamic_cast<const json::out_of_range*>(&e) != nullptr;
  throw Error(path.origin() + (range ? ": number out of range" : ": malformed JSON") + path.at() + ": " +
              describe(e));
}

std::shared_ptr<MappedFile> map_json_file(const std::string& path, const std::string& what, size_t max_bytes) {
  std::shared_ptr<MappedFile> file;
  try {
    file = MappedFile::open(path);
  } catch (const Error& e) {
    throw Error(path + ": cannot open " + what + " (" + e.what() + ")");
  }
  if (file->size() > max_bytes)
    throw Error(path + ": " + what + " is " + std::to_string(file->size()) + " bytes, more than the " +
                std::to_string(max_bytes) + " accepted");
  return file;
}

void excerpt_into(const json& v, std::string& out, size_t max_chars, size_t depth) {
  if (out.size() > max_chars) return;
  if (depth > kJsonMaxDepth) {
    out += "...";
    return;
  }
  if (v.is_object() || v.is_array()) {
    const bool obj = v.is_object();
    out += obj ? '{' : '[';
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (out.size() > max_chars) return;
      if (!first) out += ',';
      first = false;
      if (obj) {
        excerpt_into(json(bounded(it.key(), max_chars)), out, max_chars, depth + 1);
        out += ':';
      }
      excerpt_into(*it, out, max_chars, depth + 1);
    }
    out += obj ? '}' : ']';
  } else if (v.is_string()) {
    out += json(bounded(v.get_ref<const std::string&>(), max_chars)).dump(-1, ' ', false, json::error_handler_t::replace);
  } else {
    out += v.dump();
  }
}

// Streams one JSON object of declared fields (see read_json_fields) without building a DOM.
class FieldReader {
 public:
  FieldReader(JsonPath& path, const std::vector<JsonFieldSpec>& specs, std::map<std::string, JsonField>& out)
      : path_(path), specs_(specs), out_(out) {}

  bool null() { return scalar(json(nullptr), "null"); }
  bool boolean(bool b) { return scalar(json(b), b ? "true" : "false"); }
  bool number_integer(json::number_integer_t v) { return number(static_cast<double>(v), v, true, nullptr); }
  bool number_unsigned(json::number_unsigned_t v) {
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail("number " + std::to_string(v) + " is out of range");
    return number_integer(static_cast<int64_t>(v));
  }
  bool number_float(json::number_float_t v, const std::string& text) { return number(v, 0, false, &text); }
  bool string(std::string& s) {
    return scalar(json(s), json(bounded(s, 40)).dump(-1, ' ', false, json::error_handler_t::replace));
  }
  bool binary(json::binary_t&) { return scalar(json(nullptr), "binary"); }

  bool start_object(size_t) {
    if (path_.depth() > 0) fail(std::string("expected ") + expectation() + ", got an object");
    path_.open(true);
    return true;
  }
  bool key(std::string& k) {
    path_.key(k);
    spec_ = nullptr;
    for (const JsonFieldSpec& s : specs_)
      if (s.name == k) spec_ = &s;
    if (!spec_) {
      std::string names;
      for (const JsonFieldSpec& s : specs_) names += (names.empty() ? "" : ", ") + s.name;
      throw Error(path_.origin() + ": unknown field '" + bounded(k, 64) + "' (expected " + names + ")");
    }
    field_ = &out_[k];
    counts_.assign(static_cast<size_t>(spec_->rank), 0);
    field_->shape.assign(static_cast<size_t>(spec_->rank), -1);
    level_ = 0;
    return true;
  }
  bool end_object() {
    path_.close();
    return true;
  }
  bool start_array(size_t) {
    if (path_.depth() == 0) throw Error(path_.origin() + ": expected a JSON object, got an array");
    if (spec_->kind == JsonFieldSpec::Kind::Scalar || level_ >= spec_->rank)
      fail(std::string("expected ") + expectation() + ", got an array");
    path_.open(false);
    counts_[static_cast<size_t>(level_)] = 0;
    ++level_;
    return true;
  }
  bool end_array() {
    --level_;
    const size_t d = static_cast<size_t>(level_);
    const int64_t n = counts_[d];
    if (n == 0) fail("empty dimension " + std::to_string(d));
    if (field_->shape[d] < 0) {
      field_->shape[d] = n;
    } else if (field_->shape[d] != n) {
      fail("ragged array (length " + std::to_string(n) + ", expected " + std::to_string(field_->shape[d]) + ")");
    }
    path_.close();
    if (d > 0) ++counts_[d - 1];
    return true;
  }
  bool parse_error(size_t, const std::string&, const nlohmann::detail::exception& e) { throw_parse_error(path_, e); }

 private:
  [[noreturn]] void fail(const std::string& what) {
    const std::string p = path_.path();
    throw Error(path_.origin() + ": " + (p.empty() ? std::string() : "field '" + p + "': ") + what);
  }
  std::string expectation() const {
    if (!spec_) return "a JSON object";
    if (spec_->kind == JsonFieldSpec::Kind::Scalar) return "a string, number, boolean or null";
    if (level_ < spec_->rank) return "a " + std::to_string(spec_->rank) + "-dimensional array";
    return spec_->kind == JsonFieldSpec::Kind::Integers ? "an integer" : "a number";
  }
  bool scalar(json v, const std::string& text) {
    if (path_.depth() == 0) throw Error(path_.origin() + ": expected a JSON object, got " + text);
    if (spec_->kind != JsonFieldSpec::Kind::Scalar) fail("expected " + expectation() + ", got " + text);
    field_->scalar = std::move(v);
    path_.advance();
    return true;
  }
  bool number(double v, int64_t i, bool integral, const std::string* text) {
    if (path_.depth() == 0) throw Error(path_.origin() + ": expected a JSON object, got a number");
    if (spec_->kind == JsonFieldSpec::Kind::Scalar) {
      field_->scalar = integral ? json(i) : json(v);
      path_.advance();
      return true;
    }
    const std::string shown = text ? bounded(*text, 40) : std::to_string(i);
    if (level_ < spec_->rank) fail("expected " + expectation() + ", got " + shown);
    if (spec_->kind == JsonFieldSpec::Kind::Integers) {
      if (!integral) fail("expected an integer, got " + shown);
      field_->ints.push_back(i);
    } else {
      field_->numbers.push_back(v);
    }
    ++counts_[static_cast<size_t>(level_ - 1)];
    path_.advance();
    return true;
  }

  JsonPath& path_;
  const std::vector<JsonFieldSpec>& specs_;
  std::map<std::string, JsonField>& out_;
  const JsonFieldSpec* spec_ = nullptr;
  JsonField* field_ = nullptr;
  std::vector<int64_t> counts_;  // elements seen in the open array at each level
  int level_ = 0;                // arrays open within the field
};

}  // namespace

json parse_json(std::string_view text, const std::string& origin, size_t max_depth) {
  JsonPath path(origin, max_depth);
  auto track = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start: path.open(true); break;
      case json::parse_event_t::array_start: path.open(false); break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end: path.close(); break;
      case json::parse_event_t::key: path.key(parsed.get_ref<const std::string&>()); break;
      case json::parse_event_t::value: path.advance(); break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), track);
  } catch (const json::exception& e) {
    throw_parse_error(path, e);
  }
}

json read_json_file(const std::string& path, const std::string& what, size_t max_bytes) {
  const auto file = map_json_file(path, what, max_bytes);
  return parse_json(std::string_view(reinterpret_cast<const char*>(file->data()), file->size()), path);
}

std::string json_excerpt(const json& v, size_t max_chars) {
  std::string out;
  excerpt_into(v, out, max_chars, 0);
  return bounded(std::move(out), max_chars);
}

std::map<std::string, JsonField> read_json_fields(const std::string& path, const std::string& what,
                                                  const std::vector<JsonFieldSpec>& specs, size_t max_bytes) {
  const auto file = map_json_file(path, what, max_bytes);
  const char* begin = reinterpret_cast<const char*>(file->data());
  char field[80] = "";  // filled without allocating, for the out-of-memory message
  size_t values = 0;
  try {
    std::map<std::string, JsonField> out;
    JsonPath jp(path, kJsonMaxDepth);
    FieldReader reader(jp, specs, out);
    try {
      json::sax_parse(begin, begin + file->size(), &reader);
    } catch (const std::bad_alloc&) {
      std::strncpy(field, jp.field().c_str(), sizeof field - 1);
      for (const auto& [k, f] : out) values += f.ints.size() + f.numbers.size();
      throw;
    }
    return out;
  } catch (const std::bad_alloc&) {
    // Everything the reader held is freed by now, so building this message can succeed.
    throw Error(path + ": out of memory reading " + what + (field[0] ? " field '" + std::string(field) + "'" : "") +
                " after " + std::to_string(values) + " values (" + std::to_string(file->size()) + "-byte file)");
  }
}

}  // namespace cepe
