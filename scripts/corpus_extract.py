#!/usr/bin/env python3
"""Plain text out of the Debian packages that scripts/fetch-corpus.sh unpacks (python3 standard library only).

  corpus_extract.py austen RDATA_BASE OUTDIR      janeaustenr's R lazy-load DB -> one .txt per novel
  corpus_extract.py html-chain START.html OUT     follow <link rel="next"> from START, one text file
  corpus_extract.py html-files OUT FILE...        the given HTML files in order, one text file
  corpus_extract.py quiz QUIZDIR OUT.tsv          bsdgames quiz facts -> "relation<TAB>key<TAB>value" lines
  corpus_extract.py normalize IN OUT              text as the corpus stores it (see normalize()); IN may be .gz
  corpus_extract.py normalize-list LIST.tsv       the same for every "IN<TAB>OUT" line of LIST.tsv

Every output is deterministic: the same package contents give the same bytes (the sha256 pins rely on it).
"""
import gzip
import html.parser
import os
import re
import struct
import sys
import zlib


def normalize(text):
    """UTF-8 text with '\\n' line ends, no trailing blanks on a line, at most two blank lines in a row, one final
    newline. Tabs stay (code and reST need them)."""
    text = text.replace('\r\n', '\n').replace('\r', '\n').replace('\f', '\n')
    lines = [line.rstrip() for line in text.split('\n')]
    out, blank = [], 0
    for line in lines:
        blank = blank + 1 if not line else 0
        if blank <= 2:
            out.append(line)
    return '\n'.join(out).strip('\n') + '\n'


def write(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w', encoding='utf-8', newline='\n') as f:
        f.write(normalize(text))


# ---- janeaustenr: R XDR serialization (research-data.md, appendix A) ----
def _unz(b):  # the .rdx is gzip; each .rdb record is a 4-byte big-endian length + a zlib stream
    return gzip.decompress(b) if b[:2] == b'\x1f\x8b' else zlib.decompress(b[4:])


class _RReader:
    def __init__(self, b):
        if b[:2] != b'X\n':
            raise ValueError('not an R XDR stream')
        self.b, self.p, self.refs = b, 2, []
        ver = self.i()
        self.i()
        self.i()
        if ver == 3:
            n = self.i()
            self.p += n

    def i(self):
        v = struct.unpack_from('>i', self.b, self.p)[0]
        self.p += 4
        return v

    def item(self):
        fl = self.i()
        t, has_attr, has_tag = fl & 0xff, fl & 512, fl & 1024
        if t in (254, 242):
            return None
        if t == 255:
            return self.refs[(fl >> 8) - 1]
        if t == 1:
            v = ('sym', self.item())
            self.refs.append(v)
            return v
        if t == 9:
            n = self.i()
            if n < 0:
                return None
            v = self.b[self.p:self.p + n].decode('utf-8', 'replace')
            self.p += n
            return v
        if t == 2:
            out = {}
            while True:
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else None
                out[tag[1] if tag else len(out)] = self.item()
                fl = self.i()
                t, has_attr, has_tag = fl & 0xff, fl & 512, fl & 1024
                if t == 254:
                    return out
        if t in (10, 13):
            n = self.i()
            v = list(struct.unpack_from('>%di' % n, self.b, self.p))
            self.p += 4 * n
        elif t == 14:
            n = self.i()
            v = list(struct.unpack_from('>%dd' % n, self.b, self.p))
            self.p += 8 * n
        elif t in (16, 19, 20):
            n = self.i()
            v = [self.item() for _ in range(n)]
        else:
            raise ValueError('unsupported SEXP type %d' % t)
        return (v, self.item()) if has_attr else v


def austen(base, outdir):
    index = _RReader(_unz(open(base + '.rdx', 'rb').read())).item()
    offsets, attrs = index[0][0]
    rdb = open(base + '.rdb', 'rb').read()
    for name, (off, ln) in zip(attrs['names'], offsets):
        obj = _RReader(_unz(rdb[int(off):int(off) + int(ln)])).item()
        lines = obj[0] if isinstance(obj, tuple) else obj
        write(os.path.join(outdir, name + '.txt'), '\n'.join(x or '' for x in lines))


# ---- HTML -> text ----
_BLOCK = {'p', 'div', 'br', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'li', 'tr', 'pre', 'table', 'dt', 'dd', 'blockquote',
          'hr', 'title', 'ul', 'ol', 'dl'}


class _Text(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.skip, self.pre, self.next = [], 0, 0, None

    def handle_starttag(self, tag, attrs):
        a = {k.lower(): (v or '') for k, v in attrs}
        if tag == 'link' and a.get('rel', '').lower() == 'next' and self.next is None:
            self.next = a.get('href')
        if tag in ('script', 'style', 'head'):
            self.skip += 1
        if tag == 'pre':
            self.pre += 1
        if tag in _BLOCK:
            self.parts.append('\n\n' if tag in ('p', 'pre', 'h1', 'h2', 'h3', 'h4', 'table', 'blockquote') else '\n')

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag in ('script', 'style', 'head') and self.skip:
            self.skip -= 1
        if tag == 'pre' and self.pre:
            self.pre -= 1
        if tag in _BLOCK:
            self.parts.append('\n')

    def handle_data(self, data):
        if self.skip:
            return
        self.parts.append(data if self.pre else re.sub(r'\s+', ' ', data))

    def text(self):
        t = ''.join(self.parts)
        return '\n'.join(line.strip(' ') if not line.startswith(' ' * 4) else line.rstrip() for line in t.split('\n'))


def _html_text(path):
    with open(path, 'rb') as f:
        raw = f.read()
    p = _Text()
    p.feed(raw.decode('utf-8', 'replace') if b'utf-8' in raw[:2000].lower() else raw.decode('latin-1'))
    p.close()
    return p.text(), p.next


def html_chain(start, out):
    seen, texts, path = set(), [], start
    while path and os.path.abspath(path) not in seen and os.path.exists(path):
        seen.add(os.path.abspath(path))
        text, nxt = _html_text(path)
        texts.append(text)
        path = os.path.join(os.path.dirname(path), nxt.split('#')[0]) if nxt else None
    write(out, '\n\n'.join(texts))


def html_files(out, files):
    write(out, '\n\n'.join(_html_text(f)[0] for f in files))


# ---- bsdgames quiz: "key:value" lines with {optional} and [a|b] alternatives ----
def _first_form(s):
    """The plainest spelling of a quiz answer: optional parts {..} kept, the first of alternatives [a|b] and a|b."""
    s = s.replace('\\:', ':')
    s = re.sub(r'\{([^{}]*)\}', r'\1', s)
    s = re.sub(r'\{([^{}]*)\}', r'\1', s)
    s = re.sub(r'\[([^\]|]*)\|[^\]]*\]', r'\1', s)
    s = s.split('|')[0]
    return re.sub(r'\s+', ' ', s).strip()


# (file, relation, key column, value column): the quiz topics whose facts read as "The R of K is V."
_QUIZ = [('africa', 'capital', 0, 1), ('america', 'capital', 0, 1), ('asia', 'capital', 0, 1),
         ('europe', 'capital', 0, 1), ('state', 'capital', 0, 1), ('province', 'capital', 0, 1),
         ('elements', 'chemical symbol', 3, 0)]


def quiz(quizdir, out):
    rows = []
    for name, relation, k, v in _QUIZ:
        path = os.path.join(quizdir, name)
        if not os.path.exists(path):
            continue
        for line in open(path, encoding='latin-1'):
            cols = re.split(r'(?<!\\):', line.rstrip('\n'))
            if len(cols) <= max(k, v):
                continue
            key, value = _first_form(cols[k]), _first_form(cols[v])
            if key and value and '\t' not in key + value:
                rows.append('%s\t%s\t%s' % (relation, key, value))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w', encoding='utf-8', newline='\n') as f:
        f.write('\n'.join(rows) + '\n')


def normalize_file(src, dst):
    with open(src, 'rb') as f:
        raw = f.read()
    if raw[:2] == b'\x1f\x8b':
        raw = gzip.decompress(raw)
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError:
        text = raw.decode('latin-1')  # a few old LaTeX sources are Latin-1
    write(dst, text)


def main(argv):
    if len(argv) >= 3 and argv[1] == 'austen':
        austen(argv[2], argv[3])
    elif len(argv) == 4 and argv[1] == 'html-chain':
        html_chain(argv[2], argv[3])
    elif len(argv) >= 4 and argv[1] == 'html-files':
        html_files(argv[2], argv[3:])
    elif len(argv) == 4 and argv[1] == 'quiz':
        quiz(argv[2], argv[3])
    elif len(argv) == 4 and argv[1] == 'normalize':
        normalize_file(argv[2], argv[3])
    elif len(argv) == 3 and argv[1] == 'normalize-list':
        for line in open(argv[2], encoding='utf-8'):
            src, dst = line.rstrip('\n').split('\t')
            normalize_file(src, dst)
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main(sys.argv))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        sys.stderr.write('error: %s\n' % e)
        sys.exit(1)
