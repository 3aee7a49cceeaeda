#include "model/weight_store.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/json_file.h"

namespace cepe {

namespace fs = std::filesystem;

WeightStore WeightStore::open(const std::string& dir) {
  WeightStore ws;
  ws.dir_ = dir;
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  std::vector<std::string> shard_names;
  if (fs::exists(single)) {
    shard_names.push_back("model.safetensors");
  } else if (fs::exists(index)) {
    const nlohmann::json j = read_json_file(index.string(), "shard index");
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw Error(index.string() + ": missing 'weight_map' object");
    std::set<std::string> seen;
    for (const auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) throw Error(index.string() + ": weight_map entry for '" + name + "' is not a file name");
      const std::string f = file.get<std::string>();
      if (f.find('/') != std::string::npos || f.find("..") != std::string::npos)
        throw Error(index.string() + ": shard name '" + f + "' must be a plain file name");
      if (seen.insert(f).second) shard_names.push_back(f);
    }
  } else {
    throw Error(dir + ": no model.safetensors or model.safetensors.index.json (is this a checkpoint directory?)");
  }
  for (const std::string& name : shard_names) {
    auto st = std::make_shared<SafeTensors>(SafeTensors::open((fs::path(dir) / name).string()));
    for (const std::string& t : st->names()) {
      if (ws.where_.count(t))
        throw Error(dir + ": tensor '" + t + "' appears in more than one shard");
      ws.where_[t] = ws.files_.size();
    }
    ws.files_.push_back(std::move(st));
  }
  return ws;
}

bool WeightStore::has(const std::string& name) const { return where_.count(name) != 0; }

Tensor WeightStore::get(const std::string& name, const Shape& shape) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw Error(describe() + ": missing tensor '" + name + "' (expected shape " + shape_str(shape) + ")");
  const SafeTensors& f = *files_[it->second];
  Tensor t = f.get(name);
  if (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16)
    throw Error(f.path() + ": tensor '" + name + "' has dtype " + dtype_name(t.dtype()) + ", expected F32, BF16 or F16");
  if (t.shape() != shape)
    throw Error(f.path() + ": tensor '" + name + "' has shape " + shape_str(t.shape()) + ", expected " + shape_str(shape));
  used_.insert(name);
  return t;
}

Tensor WeightStore::get_f32(const std::string& name, const Shape& shape) const {
  // Small vectors (norms) converted once: cheap to check, and a NaN here would poison every output.
  Tensor t = get(name, shape).to(DType::F32);
  check_finite(t, describe() + ": tensor '" + name + "'");
  return t;
}

std::vector<std::string> WeightStore::unused() const {
  std::vector<std::string> out;
  for (const auto& [name, _] : where_)
    if (!used_.count(name)) out.push_back(name);
  return out;
}

std::string WeightStore::describe() const {
  if (files_.size() == 1) return files_[0]->path();
  return dir_ + " (" + std::to_string(files_.size()) + " shards)";
}

}  // namespace cepe
