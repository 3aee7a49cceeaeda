#include "core/plot.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "cepe/error.h"
#include "core/atomic_file.h"

namespace cepe::plot {

namespace {

// ---- font: printable ASCII, 5 columns x 7 rows above the baseline plus 2 below ('#' = ink), rows split by '|'.
constexpr int kGlyphW = 5, kGlyphRows = 9, kAdvance = 6;
constexpr const char* kGlyphs[95] = {
    ".....",                                                  // ' '
    "..#..|..#..|..#..|..#..|..#..|.....|..#..",              // !
    ".#.#.|.#.#.",                                            // "
    ".#.#.|.#.#.|#####|.#.#.|#####|.#.#.|.#.#.",              // #
    "..#..|.####|#.#..|.###.|..#.#|####.|..#..",              // $
    "##...|##..#|...#.|..#..|.#...|#..##|...##",              // %
    ".##..|#..#.|#.#..|.#...|#.#.#|#..#.|.##.#",              // &
    "..#..|..#..",                                            // '
    "...#.|..#..|.#...|.#...|.#...|..#..|...#.",              // (
    ".#...|..#..|...#.|...#.|...#.|..#..|.#...",              // )
    ".....|..#..|#.#.#|.###.|#.#.#|..#..",                    // *
    ".....|..#..|..#..|#####|..#..|..#..",                    // +
    ".....|.....|.....|.....|.....|..#..|..#..|.#...",        // ,
    ".....|.....|.....|#####",                                // -
    ".....|.....|.....|.....|.....|.....|..#..",              // .
    ".....|....#|...#.|..#..|.#...|#....",                    // /
    ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.",              // 0
    "..#..|.##..|..#..|..#..|..#..|..#..|.###.",              // 1
    ".###.|#...#|....#|...#.|..#..|.#...|#####",              // 2
    "#####|...#.|..#..|...#.|....#|#...#|.###.",              // 3
    "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.",              // 4
    "#####|#....|####.|....#|....#|#...#|.###.",              // 5
    "..##.|.#...|#....|####.|#...#|#...#|.###.",              // 6
    "#####|....#|...#.|..#..|.#...|.#...|.#...",              // 7
    ".###.|#...#|#...#|.###.|#...#|#...#|.###.",              // 8
    ".###.|#...#|#...#|.####|....#|...#.|.##..",              // 9
    ".....|.....|..#..|.....|.....|..#..",                    // :
    ".....|.....|..#..|.....|.....|..#..|..#..|.#...",        // ;
    "...#.|..#..|.#...|#....|.#...|..#..|...#.",              // <
    ".....|.....|#####|.....|#####",                          // =
    ".#...|..#..|...#.|....#|...#.|..#..|.#...",              // >
    ".###.|#...#|....#|...#.|..#..|.....|..#..",              // ?
    ".###.|#...#|....#|.##.#|#.#.#|#.#.#|.###.",              // @
    ".###.|#...#|#...#|#####|#...#|#...#|#...#",              // A
    "####.|#...#|#...#|####.|#...#|#...#|####.",              // B
    ".###.|#...#|#....|#....|#....|#...#|.###.",              // C
    "###..|#..#.|#...#|#...#|#...#|#..#.|###..",              // D
    "#####|#....|#....|####.|#....|#....|#####",              // E
    "#####|#....|#....|####.|#....|#....|#....",              // F
    ".###.|#...#|#....|#.###|#...#|#...#|.####",              // G
    "#...#|#...#|#...#|#####|#...#|#...#|#...#",              // H
    ".###.|..#..|..#..|..#..|..#..|..#..|.###.",              // I
    "..###|...#.|...#.|...#.|...#.|#..#.|.##..",              // J
    "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#",              // K
    "#....|#....|#....|#....|#....|#....|#####",              // L
    "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#",              // M
    "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#",              // N
    ".###.|#...#|#...#|#...#|#...#|#...#|.###.",              // O
    "####.|#...#|#...#|####.|#....|#....|#....",              // P
    ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#",              // Q
    "####.|#...#|#...#|####.|#.#..|#..#.|#...#",              // R
    ".####|#....|#....|.###.|....#|....#|####.",              // S
    "#####|..#..|..#..|..#..|..#..|..#..|..#..",              // T
    "#...#|#...#|#...#|#...#|#...#|#...#|.###.",              // U
    "#...#|#...#|#...#|#...#|#...#|.#.#.|..#..",              // V
    "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.",              // W
    "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#",              // X
    "#...#|#...#|.#.#.|..#..|..#..|..#..|..#..",              // Y
    "#####|....#|...#.|..#..|.#...|#....|#####",              // Z
    ".###.|.#...|.#...|.#...|.#...|.#...|.###.",              // [
    ".....|#....|.#...|..#..|...#.|....#",                    // backslash
    ".###.|...#.|...#.|...#.|...#.|...#.|.###.",              // ]
    "..#..|.#.#.|#...#",                                      // ^
    ".....|.....|.....|.....|.....|.....|.....|#####",        // _
    ".#...|..#..",                                            // `
    ".....|.....|.###.|....#|.####|#...#|.####",              // a
    "#....|#....|#.##.|##..#|#...#|#...#|####.",              // b
    ".....|.....|.###.|#....|#....|#...#|.###.",              // c
    "....#|....#|.##.#|#..##|#...#|#...#|.####",              // d
    ".....|.....|.###.|#...#|#####|#....|.###.",              // e
    "..##.|.#..#|.#...|###..|.#...|.#...|.#...",              // f
    ".....|.....|.####|#...#|#...#|#...#|.####|....#|.###.",  // g
    "#....|#....|#.##.|##..#|#...#|#...#|#...#",              // h
    "..#..|.....|.##..|..#..|..#..|..#..|.###.",              // i
    "...#.|.....|..##.|...#.|...#.|...#.|...#.|#..#.|.##..",  // j
    "#....|#....|#..#.|#.#..|##...|#.#..|#..#.",              // k
    ".##..|..#..|..#..|..#..|..#..|..#..|.###.",              // l
    ".....|.....|##.#.|#.#.#|#.#.#|#.#.#|#.#.#",              // m
    ".....|.....|#.##.|##..#|#...#|#...#|#...#",              // n
    ".....|.....|.###.|#...#|#...#|#...#|.###.",              // o
    ".....|.....|####.|#...#|#...#|#...#|####.|#....|#....",  // p
    ".....|.....|.####|#...#|#...#|#...#|.####|....#|....#",  // q
    ".....|.....|#.##.|##..#|#....|#....|#....",              // r
    ".....|.....|.####|#....|.###.|....#|####.",              // s
    ".#...|.#...|###..|.#...|.#...|.#..#|..##.",              // t
    ".....|.....|#...#|#...#|#...#|#..##|.##.#",              // u
    ".....|.....|#...#|#...#|#...#|.#.#.|..#..",              // v
    ".....|.....|#...#|#...#|#.#.#|#.#.#|.#.#.",              // w
    ".....|.....|#...#|.#.#.|..#..|.#.#.|#...#",              // x
    ".....|.....|#...#|#...#|#...#|#...#|.####|....#|.###.",  // y
    ".....|.....|#####|...#.|..#..|.#...|#####",              // z
    "...#.|..#..|..#..|.#...|..#..|..#..|...#.",              // {
    "..#..|..#..|..#..|..#..|..#..|..#..|..#..",              // |
    ".#...|..#..|..#..|...#.|..#..|..#..|.#...",              // }
    ".....|.....|.#...|#.#.#|...#.",                          // ~
};

// Glyph bitmaps unpacked once: bit c of row r set = ink at column c.
struct Font {
  std::array<std::array<uint8_t, kGlyphRows>, 95> rows{};
  Font() {
    for (int g = 0; g < 95; ++g) {
      int r = 0, c = 0;
      for (const char* p = kGlyphs[g]; *p; ++p) {
        if (*p == '|') {
          ++r;
          c = 0;
        } else {
          if (*p == '#') rows[g][r] |= static_cast<uint8_t>(1u << c);
          ++c;
        }
      }
    }
  }
};
const Font& font() {
  static const Font f;
  return f;
}

struct Rgb {
  uint8_t r, g, b;
};
constexpr Rgb kBlack{0, 0, 0}, kWhite{255, 255, 255}, kGrid{222, 222, 222}, kFrame{150, 150, 150};
// Distinct series colours (the widely used "category 10" set).
constexpr Rgb kPalette[] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},  {214, 39, 40}, {148, 103, 189},
                            {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};

struct Rect {
  double x0, y0, x1, y1;
  bool contains(double x, double y) const { return x >= x0 && x < x1 && y >= y0 && y < y1; }
};

class Canvas {
 public:
  Canvas(int w, int h) : img_{w, h, std::vector<uint8_t>(static_cast<size_t>(w) * static_cast<size_t>(h) * 3, 255)} {}
  Image take() { return std::move(img_); }
  int width() const { return img_.width; }
  int height() const { return img_.height; }

  // Mixes `c` into pixel (x, y) with weight `alpha` in [0, 1]; outside the image or `clip`, nothing.
  void blend(int x, int y, Rgb c, double alpha, const Rect* clip = nullptr) {
    if (x < 0 || y < 0 || x >= img_.width || y >= img_.height || alpha <= 0) return;
    if (clip && !clip->contains(x + 0.5, y + 0.5)) return;
    alpha = std::min(alpha, 1.0);
    uint8_t* p = &img_.rgb[(static_cast<size_t>(y) * static_cast<size_t>(img_.width) + static_cast<size_t>(x)) * 3];
    const uint8_t src[3] = {c.r, c.g, c.b};
    for (int k = 0; k < 3; ++k) p[k] = static_cast<uint8_t>(std::lround(p[k] + (src[k] - p[k]) * alpha));
  }
  void fill(int x0, int y0, int x1, int y1, Rgb c) {
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x) blend(x, y, c, 1.0);
  }
  void hline(int x0, int x1, int y, Rgb c) { fill(x0, y, x1 + 1, y + 1, c); }
  void vline(int x, int y0, int y1, Rgb c) { fill(x, y0, x + 1, y1 + 1, c); }
  void frame(int x0, int y0, int x1, int y1, Rgb c) {
    hline(x0, x1, y0, c);
    hline(x0, x1, y1, c);
    vline(x0, y0, y1, c);
    vline(x1, y0, y1, c);
  }

  // An anti-aliased segment `thickness` pixels wide with round ends: each pixel is covered by how far its centre is
  // from the segment, so lines look smooth at any slope.
  void line(double ax, double ay, double bx, double by, double thickness, Rgb c, const Rect* clip) {
    const double r = thickness / 2;
    const int x0 = static_cast<int>(std::floor(std::min(ax, bx) - r - 1)), x1 = static_cast<int>(std::ceil(std::max(ax, bx) + r + 1));
    const int y0 = static_cast<int>(std::floor(std::min(ay, by) - r - 1)), y1 = static_cast<int>(std::ceil(std::max(ay, by) + r + 1));
    const double dx = bx - ax, dy = by - ay, len2 = dx * dx + dy * dy;
    for (int y = std::max(y0, 0); y <= std::min(y1, height() - 1); ++y)
      for (int x = std::max(x0, 0); x <= std::min(x1, width() - 1); ++x) {
        const double px = x + 0.5 - ax, py = y + 0.5 - ay;
        const double t = len2 > 0 ? std::clamp((px * dx + py * dy) / len2, 0.0, 1.0) : 0.0;
        const double ex = px - t * dx, ey = py - t * dy;
        blend(x, y, c, r + 0.5 - std::sqrt(ex * ex + ey * ey), clip);
      }
  }
  void dot(double cx, double cy, double radius, Rgb c, const Rect* clip) { line(cx, cy, cx, cy, 2 * radius, c, clip); }

  // Text with its top-left corner at (x, y), each font pixel drawn as scale x scale; `vertical` runs it upwards
  // (rotated 90 degrees counter-clockwise) from (x, y) as its bottom-left corner.
  void text(int x, int y, const std::string& s, int scale, Rgb c, bool vertical = false) {
    int pen = 0;
    for (const char ch : s) {
      const int g = (ch >= 32 && ch <= 126) ? ch - 32 : '?' - 32;
      for (int r = 0; r < kGlyphRows; ++r)
        for (int col = 0; col < kGlyphW; ++col) {
          if (!(font().rows[static_cast<size_t>(g)][static_cast<size_t>(r)] & (1u << col))) continue;
          const int u = pen + col * scale, v = r * scale;  // along the text, down from its top
          if (vertical)
            fill(x + v, y - u - scale, x + v + scale, y - u, c);
          else
            fill(x + u, y + v, x + u + scale, y + v + scale, c);
        }
      pen += kAdvance * scale;
    }
  }

 private:
  Image img_;
};

int text_width(const std::string& s, int scale) { return s.empty() ? 0 : (static_cast<int>(s.size()) * kAdvance - 1) * scale; }
constexpr int kCapHeight = 7;  // rows above the baseline

// ---- axes: values are mapped through the scale (log axes work in exponents), then linearly onto pixels.
double forward(Scale s, double v) {
  switch (s) {
    case Scale::Log10: return v > 0 ? std::log10(v) : NAN;
    case Scale::Log2: return v > 0 ? std::log2(v) : NAN;
    case Scale::Linear: break;
  }
  return v;
}
double base_of(Scale s) { return s == Scale::Log2 ? 2.0 : 10.0; }

struct Tick {
  double at;  // in scaled units
  std::string label;
};

struct AxisLayout {
  double lo = 0, hi = 1;  // scaled units
  std::vector<Tick> ticks;
};

// A round tick step (1, 2 or 5 times a power of ten) giving about `target` intervals over `span`.
double nice_step(double span, int target) {
  const double raw = span / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

std::string format_fixed(double v, int decimals) {
  char b[64];
  if (v == 0) v = 0;  // no "-0"
  const double a = std::abs(v);
  if (a != 0 && (a >= 1e7 || a < 1e-4))
    std::snprintf(b, sizeof b, "%.3g", v);
  else
    std::snprintf(b, sizeof b, "%.*f", std::max(0, decimals), v);
  return b;
}

AxisLayout layout_axis(const Axis& axis, double data_lo, double data_hi, int target_ticks) {
  AxisLayout L;
  const bool log = axis.scale != Scale::Linear;
  const double fixed_lo = axis.min ? forward(axis.scale, *axis.min) : NAN;
  const double fixed_hi = axis.max ? forward(axis.scale, *axis.max) : NAN;
  double lo = std::isfinite(fixed_lo) ? fixed_lo : data_lo, hi = std::isfinite(fixed_hi) ? fixed_hi : data_hi;
  if (!std::isfinite(lo) || !std::isfinite(hi)) lo = 0, hi = 1;  // nothing to draw
  if (lo > hi) std::swap(lo, hi);
  if (hi - lo < 1e-12 * std::max(1.0, std::abs(hi))) {  // one value: give it some room
    const double pad = log ? 0.5 : std::max(std::abs(hi) * 0.1, 1e-3);
    if (!std::isfinite(fixed_lo)) lo -= pad;
    if (!std::isfinite(fixed_hi)) hi += pad;
    if (hi <= lo) hi = lo + 2 * pad;
  }
  if (log && hi - lo >= 1) {
    // Whole powers of the base, every k-th when there are many.
    if (!std::isfinite(fixed_lo)) lo = std::floor(lo + 1e-9);
    if (!std::isfinite(fixed_hi)) hi = std::ceil(hi - 1e-9);
    const int k = std::max(1, static_cast<int>(std::ceil((hi - lo) / (target_ticks + 2))));
    for (double e = std::ceil(lo - 1e-9); e <= hi + 1e-9; e += k) {
      const double v = std::pow(base_of(axis.scale), e);
      L.ticks.push_back({e, format_fixed(v, static_cast<int>(std::max(0.0, -e * std::log10(base_of(axis.scale)) + 0.5)))});
    }
  } else {
    // Linear, or a log axis spanning less than one power: round values (placed on the log scale).
    const double vlo = log ? std::pow(base_of(axis.scale), lo) : lo, vhi = log ? std::pow(base_of(axis.scale), hi) : hi;
    const double step = !log && axis.integer ? std::max(1.0, nice_step(vhi - vlo, target_ticks)) : nice_step(vhi - vlo, target_ticks);
    if (!log) {
      if (!std::isfinite(fixed_lo)) lo = std::floor(lo / step + 1e-9) * step;
      if (!std::isfinite(fixed_hi)) hi = std::ceil(hi / step - 1e-9) * step;
    }
    const int decimals = static_cast<int>(std::max(0.0, -std::floor(std::log10(step) + 1e-9)));
    for (double v = std::ceil((log ? vlo : lo) / step - 1e-9) * step; v <= (log ? vhi : hi) + step * 1e-9; v += step) {
      const double at = log ? forward(axis.scale, v) : v;
      if (std::isfinite(at)) L.ticks.push_back({at, format_fixed(v, decimals)});
    }
  }
  L.lo = lo;
  L.hi = hi;
  return L;
}

struct Bounds {
  double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
};

constexpr int kText = 2;                       // font scale for all text
constexpr int kLineH = kGlyphRows * kText;     // one text line, descenders included
constexpr int kPad = 8;

// The chart's title above its plot area [left, right] x [top, bottom], the x label below and the y label at the left.
void draw_titles(Canvas& cv, const Chart& chart, Rect area, int left, int right, int top, int bottom) {
  if (!chart.title.empty())
    cv.text((left + right) / 2 - text_width(chart.title, kText) / 2, static_cast<int>(area.y0) + kPad, chart.title,
            kText, kBlack);
  if (!chart.x.label.empty())
    cv.text((left + right) / 2 - text_width(chart.x.label, kText) / 2, bottom + kPad + kLineH + kPad, chart.x.label,
            kText, kBlack);
  if (!chart.y.label.empty())
    cv.text(static_cast<int>(area.x0) + kPad, (top + bottom) / 2 + text_width(chart.y.label, kText) / 2,
            chart.y.label, kText, kBlack, /*vertical=*/true);
}

// Red (t = 0) through yellow (0.5) to green (1), the usual needle-in-a-haystack colours.
Rgb heat_colour(double t) {
  t = std::clamp(t, 0.0, 1.0);
  const auto mix = [](Rgb a, Rgb b, double u) {
    return Rgb{static_cast<uint8_t>(std::lround(a.r + (b.r - a.r) * u)), static_cast<uint8_t>(std::lround(a.g + (b.g - a.g) * u)),
               static_cast<uint8_t>(std::lround(a.b + (b.b - a.b) * u))};
  };
  const Rgb red{215, 48, 39}, yellow{254, 224, 139}, green{26, 152, 80};
  return t < 0.5 ? mix(red, yellow, t * 2) : mix(yellow, green, (t - 0.5) * 2);
}

void draw_heatmap(Canvas& cv, const Chart& chart, Rect area) {
  const Heatmap& h = chart.heatmap;
  const size_t nc = h.columns.size(), nr = h.rows.size();
  check(nc > 0 && nr > 0 && h.values.size() == nc * nr, [&] {
    return "plot: heat map '" + chart.title + "' has " + std::to_string(h.values.size()) + " values for " +
           std::to_string(nr) + " rows x " + std::to_string(nc) + " columns";
  });
  int row_w = 0;
  for (const std::string& r : h.rows) row_w = std::max(row_w, text_width(r, kText));
  const int left = static_cast<int>(area.x0) + kPad + (chart.y.label.empty() ? 0 : kLineH + kPad) + row_w + kPad;
  const int right = static_cast<int>(area.x1) - 2 * kPad;
  const int top = static_cast<int>(area.y0) + kPad + (chart.title.empty() ? 0 : kLineH + kPad);
  const int bottom = static_cast<int>(area.y1) - kPad - (chart.x.label.empty() ? 0 : kLineH + kPad) - kLineH - kPad;
  check(right - left > 16 && bottom - top > 16, "plot: the figure is too small for its text");
  const double cw = static_cast<double>(right - left) / static_cast<double>(nc);
  const double ch = static_cast<double>(bottom - top) / static_cast<double>(nr);
  for (size_t r = 0; r < nr; ++r)
    for (size_t c = 0; c < nc; ++c) {
      const double v = h.values[r * nc + c];
      const int x0 = left + static_cast<int>(std::lround(c * cw)), x1 = left + static_cast<int>(std::lround((c + 1) * cw));
      const int y0 = top + static_cast<int>(std::lround(r * ch)), y1 = top + static_cast<int>(std::lround((r + 1) * ch));
      const bool have = std::isfinite(v);
      cv.fill(x0, y0, x1, y1, have ? heat_colour(h.hi > h.lo ? (v - h.lo) / (h.hi - h.lo) : 1.0) : kGrid);
      cv.frame(x0, y0, x1, y1, kWhite);
      if (!have) continue;
      const std::string label = format_fixed(v * h.label_scale, h.label_decimals);
      if (text_width(label, kText) + 4 <= x1 - x0 && kLineH <= y1 - y0)
        cv.text((x0 + x1) / 2 - text_width(label, kText) / 2, (y0 + y1) / 2 - kCapHeight * kText / 2, label, kText, kBlack);
    }
  for (size_t c = 0; c < nc; ++c) {
    const int x = left + static_cast<int>(std::lround((c + 0.5) * cw));
    cv.text(x - text_width(h.columns[c], kText) / 2, bottom + kPad, h.columns[c], kText, kBlack);
  }
  for (size_t r = 0; r < nr; ++r) {
    const int y = top + static_cast<int>(std::lround((r + 0.5) * ch));
    cv.text(left - kPad - text_width(h.rows[r], kText), y - kCapHeight * kText / 2, h.rows[r], kText, kBlack);
  }
  draw_titles(cv, chart, area, left, right, top, bottom);
}

constexpr int kLegendSample = 28;  // the length of a legend entry's line

int legend_entry_width(const Series& s) { return kLegendSample + kPad + text_width(s.name, kText); }

// One legend entry with its text's top at y: a line (and dot) in the series' colour, then its name.
void draw_legend_entry(Canvas& cv, const Series& s, Rgb colour, int x, int y) {
  const double cy = y + kCapHeight * kText / 2.0;
  cv.line(x, cy, x + kLegendSample, cy, 2.0, colour, nullptr);
  if (s.markers) cv.dot(x + kLegendSample / 2.0, cy, 3.5, colour, nullptr);
  cv.text(x + kLegendSample + kPad, y, s.name, kText, kBlack);
}

void draw_chart(Canvas& cv, const Chart& chart, Rect area, bool legend) {
  if (!chart.heatmap.values.empty()) return draw_heatmap(cv, chart, area);
  Bounds b;
  for (const Series& s : chart.series) {
    check(s.x.size() == s.y.size(), [&] {
      return "plot: series '" + s.name + "' has " + std::to_string(s.x.size()) + " x values but " +
             std::to_string(s.y.size()) + " y values";
    });
    for (size_t i = 0; i < s.x.size(); ++i) {
      const double x = forward(chart.x.scale, s.x[i]), y = forward(chart.y.scale, s.y[i]);
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      b.xlo = std::min(b.xlo, x), b.xhi = std::max(b.xhi, x), b.ylo = std::min(b.ylo, y), b.yhi = std::max(b.yhi, y);
    }
  }
  const AxisLayout xa = layout_axis(chart.x, b.xlo, b.xhi, 6), ya = layout_axis(chart.y, b.ylo, b.yhi, 6);

  int ytick_w = 0;
  for (const Tick& t : ya.ticks) ytick_w = std::max(ytick_w, text_width(t.label, kText));
  const int left = static_cast<int>(area.x0) + kPad + (chart.y.label.empty() ? 0 : kLineH + kPad) + ytick_w + kPad;
  // Room on the right for half of the last x tick label, which is centred on the plot's edge.
  const int last_xtick_w = xa.ticks.empty() ? 0 : text_width(xa.ticks.back().label, kText);
  const int right = static_cast<int>(area.x1) - std::max(3 * kPad, last_xtick_w / 2 + kPad);
  const int top = static_cast<int>(area.y0) + kPad + (chart.title.empty() ? 0 : kLineH + kPad);
  const int bottom = static_cast<int>(area.y1) - kPad - (chart.x.label.empty() ? 0 : kLineH + kPad) - kLineH - kPad;
  check(right - left > 16 && bottom - top > 16, "plot: the figure is too small for its text");
  const Rect plot{double(left), double(top), double(right + 1), double(bottom + 1)};
  auto px = [&](double x) { return left + (x - xa.lo) / (xa.hi - xa.lo) * (right - left); };
  auto py = [&](double y) { return bottom - (y - ya.lo) / (ya.hi - ya.lo) * (bottom - top); };

  // Grid and ticks.
  for (const Tick& t : xa.ticks) {
    const int x = static_cast<int>(std::lround(px(t.at)));
    if (x < left || x > right) continue;
    cv.vline(x, top, bottom, kGrid);
    cv.vline(x, bottom - 5, bottom, kBlack);
    cv.text(x - text_width(t.label, kText) / 2, bottom + kPad, t.label, kText, kBlack);
  }
  for (const Tick& t : ya.ticks) {
    const int y = static_cast<int>(std::lround(py(t.at)));
    if (y < top || y > bottom) continue;
    cv.hline(left, right, y, kGrid);
    cv.hline(left, left + 5, y, kBlack);
    cv.text(left - kPad - text_width(t.label, kText), y - kCapHeight * kText / 2, t.label, kText, kBlack);
  }

  // Series, clipped to the plot area; a point left out breaks the line.
  for (size_t k = 0; k < chart.series.size(); ++k) {
    const Series& s = chart.series[k];
    const Rgb c = kPalette[k % std::size(kPalette)];
    bool have_prev = false;
    double ax = 0, ay = 0;
    for (size_t i = 0; i < s.x.size(); ++i) {
      const double x = forward(chart.x.scale, s.x[i]), y = forward(chart.y.scale, s.y[i]);
      if (!std::isfinite(x) || !std::isfinite(y)) {
        have_prev = false;
        continue;
      }
      const double bx = px(x), by = py(y);
      if (have_prev) cv.line(ax, ay, bx, by, 2.0, c, &plot);
      else if (i + 1 == s.x.size() || !std::isfinite(forward(chart.y.scale, s.y[i + 1])))
        cv.dot(bx, by, 1.5, c, &plot);  // a lone point would otherwise be invisible
      if (s.markers) cv.dot(bx, by, 3.5, c, &plot);
      ax = bx, ay = by, have_prev = true;
    }
  }
  cv.frame(left, top, right, bottom, kBlack);

  // Titles and labels.
  draw_titles(cv, chart, area, left, right, top, bottom);

  // Legend: inside the plot, on white.
  int name_w = 0, rows = 0;
  for (const Series& s : chart.series)
    if (!s.name.empty()) name_w = std::max(name_w, text_width(s.name, kText)), ++rows;
  if (!legend || rows == 0) return;
  const int row_h = kLineH + 4;
  const int lw = kPad + kLegendSample + kPad + name_w + kPad, lh = kPad + rows * row_h;
  // The corner where it hides the fewest points of the lines (sampled along each segment); top right on a tie.
  const std::pair<int, int> corners[] = {{right - kPad - lw, top + kPad},
                                         {left + kPad, top + kPad},
                                         {right - kPad - lw, bottom - kPad - lh},
                                         {left + kPad, bottom - kPad - lh}};
  int lx = corners[0].first, ly = corners[0].second;
  int64_t fewest = -1;
  for (const auto& [cx, cy] : corners) {
    int64_t hidden = 0;
    for (const Series& s : chart.series)
      for (size_t i = 0; i + 1 < s.x.size(); ++i) {
        const double x0 = forward(chart.x.scale, s.x[i]), y0 = forward(chart.y.scale, s.y[i]);
        const double x1 = forward(chart.x.scale, s.x[i + 1]), y1 = forward(chart.y.scale, s.y[i + 1]);
        if (!std::isfinite(x0) || !std::isfinite(y0) || !std::isfinite(x1) || !std::isfinite(y1)) continue;
        for (int k = 0; k <= 8; ++k) {
          const double qx = px(x0 + (x1 - x0) * k / 8), qy = py(y0 + (y1 - y0) * k / 8);
          hidden += qx >= cx && qx <= cx + lw && qy >= cy && qy <= cy + lh;
        }
      }
    if (fewest < 0 || hidden < fewest) fewest = hidden, lx = cx, ly = cy;
  }
  cv.fill(lx, ly, lx + lw, ly + lh, kWhite);
  cv.frame(lx, ly, lx + lw, ly + lh, kFrame);
  int row = 0;
  for (size_t k = 0; k < chart.series.size(); ++k) {
    const Series& s = chart.series[k];
    if (s.name.empty()) continue;
    draw_legend_entry(cv, s, kPalette[k % std::size(kPalette)], lx + kPad, ly + kPad / 2 + row * row_h + 2);
    ++row;
  }
}

// The figure's shared legend: every named series of the first chart that has one, in a row centred at height y.
void draw_shared_legend(Canvas& cv, const Figure& figure, int y) {
  for (const Chart& chart : figure.charts) {
    int total = 0, n = 0;
    for (const Series& s : chart.series)
      if (!s.name.empty()) total += legend_entry_width(s), ++n;
    if (n == 0) continue;
    total += (n - 1) * 3 * kPad;
    int x = figure.width / 2 - total / 2;
    for (size_t k = 0; k < chart.series.size(); ++k) {
      const Series& s = chart.series[k];
      if (s.name.empty()) continue;
      draw_legend_entry(cv, s, kPalette[k % std::size(kPalette)], x, y);
      x += legend_entry_width(s) + 3 * kPad;
    }
    return;
  }
}

void put_u32(std::string& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<char>((v >> s) & 0xff));
}

void put_chunk(std::string& out, const char type[4], const std::string& data) {
  put_u32(out, static_cast<uint32_t>(data.size()));
  const size_t start = out.size();
  out.append(type, 4);
  out += data;
  // The CRC covers the type and the data.
  const uLong crc = crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(out.data() + start),
                          static_cast<uInt>(out.size() - start));
  put_u32(out, static_cast<uint32_t>(crc));
}

}  // namespace

Image render(const Figure& figure) {
  check(!figure.charts.empty(), "plot: the figure has no charts");
  check(figure.width >= 64 && figure.width <= 8192 && figure.height >= 64 && figure.height <= 8192, [&] {
    return "plot: figure size " + std::to_string(figure.width) + "x" + std::to_string(figure.height) +
           " is outside 64..8192";
  });
  Canvas cv(figure.width, figure.height);
  int title_h = figure.title.empty() ? 0 : kPad + kLineH;
  if (!figure.title.empty())
    cv.text(figure.width / 2 - text_width(figure.title, kText) / 2, kPad, figure.title, kText, kBlack);
  if (figure.shared_legend) {
    draw_shared_legend(cv, figure, title_h + kPad);
    title_h += kPad + kLineH;
  }
  const double w = static_cast<double>(figure.width) / static_cast<double>(figure.charts.size());
  for (size_t i = 0; i < figure.charts.size(); ++i)
    draw_chart(cv, figure.charts[i], Rect{i * w, double(title_h), (i + 1) * w, double(figure.height)},
               !figure.shared_legend);
  return cv.take();
}

std::string encode_png(const Image& image) {
  check(image.width > 0 && image.height > 0 &&
            image.rgb.size() == static_cast<size_t>(image.width) * static_cast<size_t>(image.height) * 3,
        "encode_png: the pixel buffer does not match the image size");
  // Scanlines, each led by its filter type: 0 (none); plots are mostly flat colour, which deflate packs well.
  const size_t row = static_cast<size_t>(image.width) * 3;
  std::string raw;
  raw.reserve((row + 1) * static_cast<size_t>(image.height));
  for (int y = 0; y < image.height; ++y) {
    raw.push_back('\0');
    raw.append(reinterpret_cast<const char*>(image.rgb.data()) + static_cast<size_t>(y) * row, row);
  }
  uLongf packed_size = compressBound(static_cast<uLong>(raw.size()));
  std::string packed(packed_size, '\0');
  const int rc = compress2(reinterpret_cast<Bytef*>(packed.data()), &packed_size,
                           reinterpret_cast<const Bytef*>(raw.data()), static_cast<uLong>(raw.size()), 9);
  check(rc == Z_OK, [&] { return "encode_png: zlib compress2 failed (" + std::to_string(rc) + ")"; });
  packed.resize(packed_size);

  std::string png("\x89PNG\r\n\x1a\n", 8);
  std::string ihdr;
  put_u32(ihdr, static_cast<uint32_t>(image.width));
  put_u32(ihdr, static_cast<uint32_t>(image.height));
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8 bits, RGB, deflate, no filter variants, no interlace
  put_chunk(png, "IHDR", ihdr);
  put_chunk(png, "IDAT", packed);
  put_chunk(png, "IEND", "");
  return png;
}

void write_png(const std::string& path, const Figure& figure) { write_text_atomic(path, encode_png(render(figure))); }

}  // namespace cepe::plot
