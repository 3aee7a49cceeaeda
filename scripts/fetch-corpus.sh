#!/usr/bin/env bash
# The corpus of the default model (models/cepe-tiny) and of docs/evaluation.md: real long documents in five
# domains out of Debian bookworm packages, downloaded (apt-get download) and unpacked (dpkg -x) without being
# installed, extracted to plain UTF-8 text and split by whole documents into train and held-out.
#
#   bash scripts/fetch-corpus.sh [--allow-drift] [--held-only] [DIR]     (DIR default: build/corpus)
#
#   DIR/train/<domain>/*.txt   training documents  (books, science, math, code, docs)
#   DIR/held/<domain>/*.txt    held-out documents, each >= 32k tokens; never in any training stage
#   DIR/facts/{train,held}.tsv key-value facts (bsdgames quiz) for the retrieval data; the split is by fact
#   DIR/SHA256SUMS             sha256 of every extracted file
#
# The extracted text is pinned: scripts/corpus.sha256 holds the sha256 of every file as extracted on
# 2026-12-01. A file that differs (a security update of a package changed it) is an error naming it, unless
# --allow-drift, which warns and keeps the new text. --held-only extracts only what evaluation needs (held/ and
# facts/), a smaller download. Idempotent: a DIR whose SHA256SUMS verifies is kept as it is.
# Needs: apt-get, dpkg, python3, sha256sum. No root needed for the download itself (apt-get download as root
# prints a harmless "unsandboxed" warning).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ALLOW_DRIFT=0; HELD_ONLY=0; DIR=""
for a in "$@"; do
  case $a in
    --allow-drift) ALLOW_DRIFT=1 ;;
    --held-only) HELD_ONLY=1 ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    -*) echo "error: unknown option '$a' (--allow-drift, --held-only)" >&2; exit 1 ;;
    *) DIR=$a ;;
  esac
done
DIR=${DIR:-$ROOT/build/corpus}
PINS=$ROOT/scripts/corpus.sha256
EXTRACT="python3 $ROOT/scripts/corpus_extract.py"
for c in apt-get dpkg python3 sha256sum; do
  command -v $c > /dev/null || { echo "error: $c not found (Debian 12 has it)" >&2; exit 1; }
done

# What a complete corpus is: every pinned file (or, --held-only, every pinned held/ and facts/ file).
wanted() { if [ $HELD_ONLY = 1 ]; then grep -E '  (held/|facts/held)' "$PINS"; else cat "$PINS"; fi; }
if [ -f "$PINS" ] && [ -f "$DIR/SHA256SUMS" ] && (cd "$DIR" && wanted | sha256sum --quiet -c - > /dev/null 2>&1); then
  echo "fetch-corpus: $DIR verified against scripts/corpus.sha256, kept"
  exit 0
fi

BOOKS=(r-cran-janeaustenr bible-kjv bible-kjv-text jargon-text cfi-en)
SCIENCE=(pari-doc r-cran-survival r-cran-lme4 r-cran-sandwich r-cran-strucchange r-cran-rcppeigen r-cran-vcd
  r-cran-zoo r-cran-matrix r-cran-partykit r-cran-multcomp r-cran-coin r-cran-flexmix r-cran-e1071 r-cran-mvtnorm
  r-cran-lmtest)
MATH=(libcoq-stdlib metamath-databases)
CODE=(libpython3.11-stdlib libpython3.11-minimal)
DOCS=(python3.11-doc debian-reference-en abs-guide)
FACTS=(bsdgames)
if [ $HELD_ONLY = 1 ]; then
  PKGS=(r-cran-janeaustenr cfi-en pari-doc r-cran-survival r-cran-lme4 r-cran-sandwich r-cran-rcppeigen r-cran-vcd
    libcoq-stdlib metamath-databases libpython3.11-stdlib libpython3.11-minimal python3.11-doc debian-reference-en bsdgames)
else
  PKGS=("${BOOKS[@]}" "${SCIENCE[@]}" "${MATH[@]}" "${CODE[@]}" "${DOCS[@]}" "${FACTS[@]}")
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cepe-corpus.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
echo "fetch-corpus: downloading ${#PKGS[@]} packages"
if ! (cd "$WORK" && apt-get download -q "${PKGS[@]}" > apt.log 2>&1); then
  # A machine that never ran apt-get update has no package lists.
  echo "fetch-corpus: apt-get download failed; running apt-get update and retrying"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  (cd "$WORK" && apt-get download -q "${PKGS[@]}" > apt.log 2>&1) || { grep -E '^E:' "$WORK/apt.log" >&2; echo "error: apt-get download failed" >&2; exit 1; }
fi
mkdir -p "$WORK/x"
for d in "$WORK"/*.deb; do dpkg -x "$d" "$WORK/x"; done
X=$WORK/x

OUT=$WORK/out
mkdir -p "$OUT"
put() {  # put SPLIT/DOMAIN/NAME SOURCE: one document, normalised (all of them at once, below)
  printf '%s\t%s\n' "$2" "$OUT/$1" >> "$WORK/documents.tsv"
}

echo "fetch-corpus: extracting"
# ---- books: Jane Austen (2 novels held out), the KJV Bible, the Jargon File, Copyright Does Not Exist (held) ----
$EXTRACT austen "$X/usr/lib/R/site-library/janeaustenr/data/Rdata" "$WORK/austen"
for b in persuasion northangerabbey; do put "held/books/austen-$b.txt" "$WORK/austen/$b.txt"; done
$EXTRACT html-files "$OUT/held/books/copyright-does-not-exist.txt" $(ls "$X"/usr/share/doc/cfi-en/html/ch*web.htm | sort -V)
if [ $HELD_ONLY = 0 ]; then
  for b in emma mansfieldpark prideprejudice sensesensibility; do put "train/books/austen-$b.txt" "$WORK/austen/$b.txt"; done
  "$X/usr/bin/bible" -p "$X/usr/lib" 'gen1:1-rev22:21' > "$WORK/kjv.txt"
  put train/books/bible-kjv.txt "$WORK/kjv.txt"
  put train/books/jargon-file.txt "$X/usr/share/doc/jargon-text/jargon.txt.gz"
fi

# ---- science: LaTeX papers and manuals (R package vignettes, many of them JSS/arXiv papers; the PARI/GP docs) ----
HELD_SCI=" survival/survival.Rnw lme4/lmer.Rnw vcd/strucplot.Rnw RcppEigen/RcppEigen-Introduction.Rnw sandwich/sandwich-CL.Rnw "
while read -r f; do
  pkg=$(echo "$f" | sed -E 's#.*library/([^/]+)/.*#\1#'); key="$pkg/$(basename "$f")"
  if [[ $HELD_SCI == *" $key "* ]]; then put "held/science/r-$pkg-$(basename "$f" .Rnw).tex" "$f"
  elif [ $HELD_ONLY = 0 ]; then put "train/science/r-$pkg-$(basename "$f" .Rnw).tex" "$f"; fi
done < <(find "$X/usr/lib/R" -name '*.Rnw' -size +1k | LC_ALL=C sort)
put held/science/pari-tutorial.tex "$X/usr/share/pari/doc/tutorial.tex"
if [ $HELD_ONLY = 0 ]; then
  for f in $(ls "$X"/usr/share/pari/doc/*.tex | LC_ALL=C sort); do
    case $(basename "$f") in tutorial.tex | parimacro.tex | pdfmacs.tex | paricfg.tex) continue ;; esac
    put "train/science/pari-$(basename "$f")" "$f"
  done
fi

# ---- math: Coq's standard library (4 files held out), Metamath databases (hol.mm, ql.mm held out; nf.mm trained) ----
COQ=$X/usr/lib/ocaml/coq/theories
for f in Reals/RiemannInt.v Reals/RiemannInt_SF.v ssr/ssrbool.v Lists/List.v; do
  put "held/math/coq-$(echo "$f" | tr / -)" "$COQ/$f"
done
put held/math/metamath-hol.mm "$X/usr/share/metamath/databases/hol.mm"
put held/math/metamath-ql.mm "$X/usr/share/metamath/databases/ql.mm"
if [ $HELD_ONLY = 0 ]; then
  while read -r f; do
    rel=${f#"$COQ"/}
    case " Reals/RiemannInt.v Reals/RiemannInt_SF.v ssr/ssrbool.v Lists/List.v " in *" $rel "*) continue ;; esac
    put "train/math/coq-$(echo "$rel" | tr / -)" "$f"
  done < <(find "$COQ" -name '*.v' -size +1k | LC_ALL=C sort)
  put train/math/metamath-nf.mm "$X/usr/share/metamath/databases/nf.mm"
fi

# ---- code: CPython 3.11's standard library outside its tests (5 long modules held out) ----
PY=$X/usr/lib/python3.11
for f in _pydecimal.py turtle.py typing.py inspect.py email/_header_value_parser.py; do
  put "held/code/py-$(echo "$f" | tr / -)" "$PY/$f"
done
if [ $HELD_ONLY = 0 ]; then
  while read -r f; do
    rel=${f#./}
    case " _pydecimal.py turtle.py typing.py inspect.py email/_header_value_parser.py " in *" $rel "*) continue ;; esac
    put "train/code/py-$(echo "$rel" | tr / -)" "$PY/$rel"
  done < <(cd "$PY" && find . -name '*.py' -size +1k -not -path '*/test/*' -not -path '*/tests/*' -not -path '*/idle_test/*' \
      -not -path './encodings/*' -not -path './pydoc_data/*' -not -path './site-packages/*' -not -path './dist-packages/*' \
      | LC_ALL=C sort)
fi

# ---- docs: Python's reST documentation (2 held out), the Debian Reference (held), the Advanced Bash-Scripting Guide ----
RST=$X/usr/share/doc/python3.11/html/_sources
put held/docs/python-library-stdtypes.rst "$RST/library/stdtypes.rst.txt"
put held/docs/python-library-os.rst "$RST/library/os.rst.txt"
put held/docs/debian-reference.txt "$X/usr/share/doc/debian-reference-en/docs/debian-reference.en.txt.gz"
if [ $HELD_ONLY = 0 ]; then
  while read -r f; do
    rel=${f#./}
    case $rel in library/stdtypes.rst.txt | library/os.rst.txt) continue ;; esac
    put "train/docs/python-$(echo "${rel%.txt}" | tr / -)" "$RST/$rel"
  done < <(cd "$RST" && find . -name '*.rst.txt' -size +1k | LC_ALL=C sort)
  $EXTRACT html-chain "$X/usr/share/doc/abs-guide/html/index.html" "$OUT/train/docs/abs-guide.txt"
fi

$EXTRACT normalize-list "$WORK/documents.tsv"

# ---- facts: bsdgames quiz (capitals, chemical symbols), every 5th fact held out ----
$EXTRACT quiz "$X/usr/share/games/bsdgames/quiz" "$WORK/facts.tsv"
mkdir -p "$OUT/facts"
awk 'NR % 5 == 0' "$WORK/facts.tsv" > "$OUT/facts/held.tsv"
[ $HELD_ONLY = 1 ] || awk 'NR % 5 != 0' "$WORK/facts.tsv" > "$OUT/facts/train.tsv"

(cd "$OUT" && find . -type f | sed 's#^\./##' | LC_ALL=C sort | xargs sha256sum) > "$WORK/SHA256SUMS"
mv "$WORK/SHA256SUMS" "$OUT/SHA256SUMS"

# Pins: every extracted file must have the pinned bytes (no pins yet: write them, for a maintainer to commit).
if [ ! -f "$PINS" ]; then
  cp "$OUT/SHA256SUMS" "$PINS"
  echo "fetch-corpus: wrote the pins to $PINS (commit them)"
else
  bad=$(cd "$OUT" && wanted | sha256sum -c - 2>/dev/null | grep -v ': OK$' || true)
  if [ -n "$bad" ]; then
    echo "$bad" | sed 's/^/  /' >&2
    if [ $ALLOW_DRIFT = 1 ]; then
      echo "warning: $(echo "$bad" | wc -l) corpus file(s) differ from scripts/corpus.sha256 (a package changed); kept (--allow-drift)" >&2
    else
      echo "error: $(echo "$bad" | wc -l) corpus file(s) differ from scripts/corpus.sha256 (a package changed since the pins); see above, or rerun with --allow-drift" >&2
      exit 1
    fi
  fi
fi

mkdir -p "$(dirname "$DIR")"
rm -rf "$DIR.new" && mv "$OUT" "$DIR.new" && rm -rf "$DIR" && mv "$DIR.new" "$DIR"
for s in train held; do
  [ -d "$DIR/$s" ] || continue
  for d in "$DIR/$s"/*/; do
    printf 'fetch-corpus: %-5s %-8s %5d documents %9s bytes\n' "$s" "$(basename "$d")" "$(ls "$d" | wc -l)" "$(cat "$d"/* | wc -c)"
  done
done
echo "fetch-corpus: facts $(wc -l < "$DIR/facts/held.tsv") held-out$( [ -f "$DIR/facts/train.tsv" ] && echo ", $(wc -l < "$DIR/facts/train.tsv") train"); corpus in $DIR"
