// PNG line plots (src/core/plot): the file's structure checked byte by byte with zlib, and what is drawn.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <array>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

#include "cepe/error.h"
#include "core/plot.h"

namespace cepe::plot {
namespace {

namespace fs = std::filesystem;

uint32_t be32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(s.at(at + i));
  return v;
}

struct Chunk {
  std::string type, data;
};

// Splits a PNG into chunks, checking the signature and every chunk's CRC.
std::vector<Chunk> parse_png(const std::string& png) {
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  std::vector<Chunk> chunks;
  size_t at = 8;
  while (at < png.size()) {
    const uint32_t len = be32(png, at);
    Chunk c{png.substr(at + 4, 4), png.substr(at + 8, len)};
    const uLong crc = crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(png.data() + at + 4), len + 4);
    EXPECT_EQ(be32(png, at + 8 + len), static_cast<uint32_t>(crc)) << "CRC of chunk " << c.type;
    chunks.push_back(std::move(c));
    at += 12 + len;
  }
  EXPECT_EQ(at, png.size());
  return chunks;
}

Figure loss_figure() {
  Series train{.name = "train loss"}, eval{.name = "eval loss", .markers = true};
  for (int s = 1; s <= 300; ++s) {
    train.x.push_back(s);
    train.y.push_back(2.0 + 8.0 * std::exp(-s / 60.0) + 0.1 * std::sin(s * 1.7));
  }
  for (int s = 50; s <= 300; s += 50) {
    eval.x.push_back(s);
    eval.y.push_back(2.2 + 8.0 * std::exp(-s / 60.0));
  }
  Figure f{.title = "train/eval loss", .width = 640, .height = 400};
  f.charts.push_back({.title = "decoder", .x = {.label = "step"}, .y = {.label = "loss"}, .series = {train, eval}});
  return f;
}

TEST(Plot, WritesAValidPng) {
  const fs::path path = fs::temp_directory_path() / ("cepe-plot-" + std::to_string(::getpid()) + ".png");
  write_png(path.string(), loss_figure());
  std::ifstream in(path, std::ios::binary);
  const std::string png((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  fs::remove(path);

  const std::vector<Chunk> chunks = parse_png(png);
  ASSERT_GE(chunks.size(), 3u);
  EXPECT_EQ(chunks.front().type, "IHDR");
  EXPECT_EQ(chunks.back().type, "IEND");
  EXPECT_TRUE(chunks.back().data.empty());
  const std::string& ihdr = chunks.front().data;
  ASSERT_EQ(ihdr.size(), 13u);
  EXPECT_EQ(be32(ihdr, 0), 640u);
  EXPECT_EQ(be32(ihdr, 4), 400u);
  EXPECT_EQ(ihdr.substr(8), std::string("\x08\x02\x00\x00\x00", 5));  // 8-bit RGB, deflate, no interlace

  std::string idat;
  for (const Chunk& c : chunks)
    if (c.type == "IDAT") idat += c.data;
  const size_t row = 1 + 640 * 3;
  std::string raw(row * 400 + 1, '\0');  // one spare byte: a longer stream would fill it
  uLongf raw_size = raw.size();
  ASSERT_EQ(uncompress(reinterpret_cast<Bytef*>(raw.data()), &raw_size, reinterpret_cast<const Bytef*>(idat.data()),
                       idat.size()),
            Z_OK);
  ASSERT_EQ(raw_size, row * 400);
  for (size_t y = 0; y < 400; ++y) ASSERT_EQ(raw[y * row], '\0') << "filter byte of row " << y;

  // The pixels are what render() drew.
  const Image img = render(loss_figure());
  for (size_t y = 0; y < 400; ++y)
    ASSERT_EQ(std::memcmp(raw.data() + y * row + 1, img.rgb.data() + y * 640 * 3, 640 * 3), 0) << "row " << y;
}

TEST(Plot, DrawsEverySeriesInItsOwnColour) {
  const Image img = render(loss_figure());
  ASSERT_EQ(img.rgb.size(), 640u * 400u * 3u);
  std::set<std::array<uint8_t, 3>> colours;
  for (size_t i = 0; i < img.rgb.size(); i += 3) colours.insert({img.rgb[i], img.rgb[i + 1], img.rgb[i + 2]});
  EXPECT_TRUE(colours.count({31, 119, 180})) << "first series (blue) not drawn";
  EXPECT_TRUE(colours.count({255, 127, 14})) << "second series (orange) not drawn";
  EXPECT_TRUE(colours.count({0, 0, 0})) << "no axes or text";
  EXPECT_EQ((std::array<uint8_t, 3>{img.rgb[0], img.rgb[1], img.rgb[2]}), (std::array<uint8_t, 3>{255, 255, 255}));
  // Deterministic: the same figure gives the same pixels.
  EXPECT_EQ(render(loss_figure()).rgb, img.rgb);
}

// Pixels of `colour` in rows [y0, y1) of the image.
int64_t count_colour(const Image& img, std::array<uint8_t, 3> colour, int y0, int y1) {
  int64_t n = 0;
  for (int y = y0; y < y1; ++y)
    for (int x = 0; x < img.width; ++x) {
      const uint8_t* p = img.rgb.data() + (static_cast<size_t>(y) * img.width + x) * 3;
      n += p[0] == colour[0] && p[1] == colour[1] && p[2] == colour[2];
    }
  return n;
}

TEST(Plot, ASharedLegendSitsInARowAboveTheCharts) {
  Figure f = loss_figure();
  f.width = 1000;
  f.charts.push_back(f.charts[0]);
  f.charts[1].title = "encoder";
  // The row under the figure's title (8 + 18 pixels of title, then 8 of padding, 18 of text): the legend's lines
  // are there in the series' colours, and nowhere else when each chart has its own legend.
  constexpr int kRow0 = 26, kRow1 = 26 + 8 + 18;
  const Image separate = render(f);
  EXPECT_EQ(count_colour(separate, {31, 119, 180}, kRow0, kRow1), 0);
  f.shared_legend = true;
  const Image shared = render(f);
  EXPECT_GT(count_colour(shared, {31, 119, 180}, kRow0, kRow1), 20) << "no blue legend line above the charts";
  EXPECT_GT(count_colour(shared, {255, 127, 14}, kRow0, kRow1), 20) << "no orange legend line above the charts";
  EXPECT_GT(count_colour(shared, {0, 0, 0}, kRow0, kRow1), 50) << "no legend text";
  // The legends inside the charts are gone: each chart's legend box frame (grey) is no longer drawn.
  EXPECT_GT(count_colour(separate, {150, 150, 150}, kRow1, f.height), 0);
  EXPECT_EQ(count_colour(shared, {150, 150, 150}, kRow1, f.height), 0);
}

TEST(Plot, LogAxesSkipPointsTheyCannotShow) {
  Figure f{.width = 300, .height = 200};
  f.charts.push_back({.x = {.scale = Scale::Log2}, .y = {.scale = Scale::Log10},
                      .series = {{.name = "s", .x = {0, 1, 2, 4, 8}, .y = {1, -1, 10, NAN, 1000}}}});
  EXPECT_NO_THROW(render(f));
  f.charts[0].series[0].x = {};
  f.charts[0].series[0].y = {};
  EXPECT_NO_THROW(render(f));  // nothing to draw: still an empty chart
}

TEST(Plot, RejectsBadFigures) {
  Figure f{.width = 300, .height = 200};
  EXPECT_THROW(render(f), Error);  // no charts
  f.charts.push_back({.series = {{.name = "ragged", .x = {1, 2, 3}, .y = {1, 2}}}});
  try {
    render(f);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "plot: series 'ragged' has 3 x values but 2 y values");
  }
  f.charts[0].series.clear();
  f.width = 10;
  EXPECT_THROW(render(f), Error);
  EXPECT_THROW(write_png("/nonexistent-dir/x.png", loss_figure()), Error);
}

}  // namespace
}  // namespace cepe::plot
