#pragma once
// Line plots as PNG files, with no plotting program: loss curves for `cepe train --plot`, throughput and memory
// for `cepe bench --plot`. A figure is one or more charts side by side under an optional title; each chart has
// a title, two axes (linear, log10 or log2, limits automatic or fixed), grid lines at the ticks, and any number
// of named series drawn as anti-aliased lines in distinct colours, with a legend; or a heat map of cells. Text uses a built-in 5x7
// pixel font (printable ASCII).
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace cepe::plot {

enum class Scale { Linear, Log10, Log2 };

struct Axis {
  std::string label{};
  Scale scale = Scale::Linear;
  std::optional<double> min{}, max{};  // unset: from the data (linear: out to the next tick; log: whole powers)
  bool integer = false;                // linear: ticks at whole numbers only (rounds, steps, counts)
};

// Points whose x or y is not finite (or not > 0 on a log axis) are left out, and the line breaks there.
struct Series {
  std::string name{};  // in the legend
  std::vector<double> x{}, y{};
  bool markers = false;  // a dot at each point as well as the line
};

// A grid of coloured cells (e.g. retrieval accuracy by context length x needle depth): categories on both
// axes, each cell coloured on a red (lo) - yellow - green (hi) scale with its value written in it.
struct Heatmap {
  std::vector<std::string> columns{}, rows{};  // x categories left to right, y categories top to bottom
  std::vector<double> values{};                // rows x columns, row-major; NaN: an empty (grey) cell
  double lo = 0, hi = 1;                       // the colour scale's ends
  double label_scale = 1;                      // the cell text is value * label_scale (100: percent)
  int label_decimals = 0;
};

struct Chart {
  std::string title{};
  Axis x{}, y{};                 // a heat map uses only their labels
  std::vector<Series> series{};  // colours in this order: blue, orange, green, red, purple, brown, pink, grey, ...
  Heatmap heatmap{};             // drawn instead of series when it has values
};

struct Figure {
  std::string title{};  // above all charts; empty for none
  int width = 900, height = 540;
  std::vector<Chart> charts{};  // side by side, equal widths
  // One legend for all charts, in a row under the title, instead of one inside each chart: for charts whose
  // series are the same (same names, same order, so the same colours), where a legend inside would hide data.
  bool shared_legend = false;
};

// 8-bit RGB pixels, row-major, top row first.
struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // width * height * 3
};

// Draws `figure`. Throws cepe::Error on a figure without charts, a size outside [64, 8192], a series whose
// x and y differ in length (naming the series), or a heat map whose values are not rows x columns.
Image render(const Figure& figure);

// The image as a PNG file's bytes: colour type 2 (RGB, 8 bits), one zlib-compressed IDAT chunk.
std::string encode_png(const Image& image);

// render + encode_png, written atomically (a temporary file renamed over `path`).
void write_png(const std::string& path, const Figure& figure);

}  // namespace cepe::plot
