// The single-process communicator and the gradient reducer's bucketing, launch order, packing and errors
// (docs/training.md, "Data parallelism"). The MPI communicator across processes: tests/mpi_check.cpp.
#include <gtest/gtest.h>

#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "cepe/error.h"
#include "train/comm.h"
#include "train/optimizer.h"

namespace cepe::train {
namespace {

TEST(SingleCommunicator, IsRankZeroOfOneAndLeavesDataAsItIs) {
  auto comm = make_single_communicator();
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->size(), 1);
  EXPECT_STREQ(comm->backend(), "single");
  std::vector<float> f = {1.5f, -2.25f, 3e-30f};
  std::vector<double> d = {0.1, -7.0};
  std::vector<int64_t> i = {int64_t{1} << 62, -3};
  comm->allreduce_sum(f.data(), f.size());
  comm->allreduce_sum(d.data(), d.size());
  comm->allreduce_sum(i.data(), i.size());
  EXPECT_EQ(f, (std::vector<float>{1.5f, -2.25f, 3e-30f}));
  EXPECT_EQ(d, (std::vector<double>{0.1, -7.0}));
  EXPECT_EQ(i, (std::vector<int64_t>{int64_t{1} << 62, -3}));
  auto pending = comm->allreduce_sum_async(f.data(), f.size());
  pending->wait();
  pending->wait();
  EXPECT_EQ(f[1], -2.25f);
  char bytes[4] = {'a', 'b', 'c', 'd'};
  comm->broadcast(bytes, sizeof bytes, 0);
  EXPECT_EQ(std::string(bytes, 4), "abcd");
  comm->barrier();
  EXPECT_EQ(comm->allgather(42), (std::vector<int64_t>{42}));
  comm->allreduce_sum(static_cast<float*>(nullptr), 0);  // empty is fine
}

TEST(SingleCommunicator, RejectsBadArguments) {
  auto comm = make_single_communicator();
  char byte = 0;
  try {
    comm->broadcast(&byte, 1, 1);
    FAIL() << "root 1 accepted";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "broadcast: root 1 out of range for 1 rank");
  }
  EXPECT_THROW(comm->allreduce_sum(static_cast<float*>(nullptr), 3), Error);
  EXPECT_THROW(comm->allreduce_sum_async(nullptr, 3), Error);
}

TEST(MakeCommunicator, OutsideALauncherIsSingle) {
  // ctest does not run this under mpirun; the launcher variables are absent.
  ASSERT_EQ(std::getenv("OMPI_COMM_WORLD_SIZE"), nullptr);
  ASSERT_EQ(std::getenv("PMI_SIZE"), nullptr);
  auto comm = make_communicator();
  EXPECT_STREQ(comm->backend(), "single");
  EXPECT_EQ(comm->size(), 1);
  EXPECT_EQ(built_with_mpi(), CEPE_TEST_HAVE_MPI != 0);
}

#if !CEPE_TEST_HAVE_MPI
TEST(MakeCommunicator, UnderALauncherWithoutMpiIsAnError) {
  // Several processes that each believe they are alone would each train and write the same checkpoints.
  ::setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  try {
    (void)make_communicator();
    ::unsetenv("OMPI_COMM_WORLD_SIZE");
    FAIL() << "no error";
  } catch (const Error& e) {
    ::unsetenv("OMPI_COMM_WORLD_SIZE");
    EXPECT_NE(std::string(e.what()).find("started by an MPI launcher with 2 processes, but this build has no MPI"),
              std::string::npos) << e.what();
  }
  ::setenv("OMPI_COMM_WORLD_SIZE", "1", 1);  // mpirun -np 1: one process, fine
  EXPECT_STREQ(make_communicator()->backend(), "single");
  ::unsetenv("OMPI_COMM_WORLD_SIZE");
}
#endif

TEST(AgreeOnFailure, ThrowsOnEveryRankWhenOneFailed) {
  auto comm = make_single_communicator();
  EXPECT_NO_THROW(throw_if_any_rank_failed(*comm, true, "step 3"));
  try {
    throw_if_any_rank_failed(*comm, false, "step 3");
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "rank 0 of 1 failed during step 3");
  }
}

// A two-rank stand-in in one process: each reduction adds a copy of "the other rank", here 1000 + the element's
// index in the reduced vector, when it is waited for. It records every reduction (its size and first value at
// launch), so the tests see what the reducer launched, in which order, and what it wrote back.
class FakeCommunicator final : public Communicator {
 public:
  struct Launch {
    size_t n;
    float first;
  };
  std::vector<Launch> launches;
  int waits_pending = 0;

  int rank() const override { return 0; }
  int size() const override { return 2; }
  const char* backend() const override { return "fake"; }
  void allreduce_sum(float* data, size_t n) override { allreduce_sum_async(data, n)->wait(); }
  void allreduce_sum(double*, size_t) override {}
  void allreduce_sum(int64_t*, size_t) override {}
  std::unique_ptr<PendingReduce> allreduce_sum_async(float* data, size_t n) override {
    launches.push_back({n, data[0]});
    ++waits_pending;
    return std::make_unique<Pending>(this, data, n);
  }
  void broadcast(void*, size_t, int) override {}
  void barrier() override {}
  std::vector<int64_t> allgather(int64_t value) override { return {value, value}; }

 private:
  struct Pending final : PendingReduce {
    Pending(FakeCommunicator* c, float* d, size_t n) : comm(c), data(d), n(n) {}
    ~Pending() override { wait(); }
    void wait() override {
      if (!data) return;
      for (size_t i = 0; i < n; ++i) data[i] += 1000.0f + static_cast<float>(i);
      data = nullptr;
      --comm->waits_pending;
    }
    FakeCommunicator* comm;
    float* data;
    size_t n;
  };
};

// Buffers 0-2 back to back in one arena, 3 and 4 separate; values 1, 2, 3, ... in list order.
struct Grads {
  std::vector<float> arena = std::vector<float>(10 + 20 + 30);
  std::vector<float> b3 = std::vector<float>(40), b4 = std::vector<float>(5);
  std::vector<GradientBuffer> buffers() {
    return {{arena.data(), 10, "a"}, {arena.data() + 10, 20, "b"}, {arena.data() + 30, 30, "c"},
            {b3.data(), 40, "d"}, {b4.data(), 5, "e"}};
  }
  void fill() {
    std::iota(arena.begin(), arena.end(), 1.0f);
    std::iota(b3.begin(), b3.end(), 61.0f);
    std::iota(b4.begin(), b4.end(), 101.0f);
  }
  std::vector<float> all() const {
    std::vector<float> v = arena;
    v.insert(v.end(), b3.begin(), b3.end());
    v.insert(v.end(), b4.begin(), b4.end());
    return v;
  }
};

TEST(GradientReducer, GroupsConsecutiveBuffersIntoBucketsOfTheGivenSize) {
  FakeCommunicator comm;
  Grads g;
  // 35 floats per bucket: {a, b} (30), {c} (30; c + d would be 70), {d} (40: larger than a bucket, alone), {e}.
  GradientReducer reducer(comm, g.buffers(), 35 * sizeof(float));
  ASSERT_EQ(reducer.bucket_count(), 4u);
  EXPECT_EQ(reducer.bucket_of(0), 0u);
  EXPECT_EQ(reducer.bucket_of(1), 0u);
  EXPECT_EQ(reducer.bucket_of(2), 1u);
  EXPECT_EQ(reducer.bucket_of(3), 2u);
  EXPECT_EQ(reducer.bucket_of(4), 3u);
  GradientReducer one_bucket(comm, g.buffers());  // 25 MiB: everything in one
  EXPECT_EQ(one_bucket.bucket_count(), 1u);
}

TEST(GradientReducer, LaunchesBucketsInIndexOrderWhateverTheStartOrder) {
  FakeCommunicator comm;
  Grads g;
  g.fill();
  GradientReducer reducer(comm, g.buffers(), 35 * sizeof(float));
  reducer.start(4);  // bucket 3 is ready but must wait for buckets 0-2
  EXPECT_EQ(reducer.buckets_launched(), 0u);
  reducer.start(2);
  reducer.start(1);
  EXPECT_EQ(reducer.buckets_launched(), 0u);  // bucket 0 still lacks buffer 0
  reducer.start(0);
  EXPECT_EQ(reducer.buckets_launched(), 2u);  // 0 and 1 now; 2 waits for buffer 3
  reducer.start(3);
  EXPECT_EQ(reducer.buckets_launched(), 4u);
  ASSERT_EQ(comm.launches.size(), 4u);
  // Launched in order 0, 1, 2, 3: sizes 30, 30, 40, 5, starting with a[0], c[0], d[0], e[0].
  EXPECT_EQ(comm.launches[0].n, 30u);
  EXPECT_EQ(comm.launches[0].first, 1.0f);
  EXPECT_EQ(comm.launches[1].n, 30u);
  EXPECT_EQ(comm.launches[1].first, 31.0f);
  EXPECT_EQ(comm.launches[2].n, 40u);
  EXPECT_EQ(comm.launches[2].first, 61.0f);
  EXPECT_EQ(comm.launches[3].n, 5u);
  EXPECT_EQ(comm.launches[3].first, 101.0f);
  reducer.finish();
  EXPECT_EQ(comm.waits_pending, 0);
  EXPECT_EQ(reducer.buckets_launched(), 0u);  // the next step begins
}

TEST(GradientReducer, WritesEachBucketsSumBackIntoItsBuffers) {
  FakeCommunicator comm;
  Grads g;
  g.fill();
  // Bucket 0 = {a, b, c} in place (contiguous); bucket 1 = {d, e} packed (separate vectors).
  GradientReducer reducer(comm, g.buffers(), 60 * sizeof(float));
  ASSERT_EQ(reducer.bucket_count(), 2u);
  reducer.start(1);
  reducer.finish();  // starts a, c, d, e itself
  const std::vector<float> got = g.all();
  for (size_t i = 0; i < 60; ++i)  // arena element i: value i + 1, position i in bucket 0
    ASSERT_EQ(got[i], static_cast<float>(i + 1) + 1000.0f + static_cast<float>(i)) << i;
  for (size_t i = 0; i < 45; ++i)  // d then e packed: position i in bucket 1
    ASSERT_EQ(got[60 + i], static_cast<float>(i < 40 ? 61 + i : 101 + (i - 40)) + 1000.0f + static_cast<float>(i)) << i;

  // A second step with reduce_all gives the same.
  g.fill();
  reducer.reduce_all();
  EXPECT_EQ(g.all(), got);
  EXPECT_EQ(comm.launches.size(), 4u);
}

TEST(GradientReducer, WithTheSingleCommunicatorLeavesGradientsAsTheyAre) {
  auto comm = make_single_communicator();
  Grads g;
  g.fill();
  const std::vector<float> before = g.all();
  GradientReducer reducer(*comm, g.buffers(), 16);
  EXPECT_EQ(reducer.bucket_count(), 5u);  // 4 floats per bucket: every buffer alone
  for (size_t i = 5; i-- > 0;) reducer.start(i);
  reducer.finish();
  EXPECT_EQ(g.all(), before);
}

TEST(GradientReducer, RejectsBadBuffersAndDoubleStarts) {
  FakeCommunicator comm;
  Grads g;
  std::vector<GradientBuffer> twice = g.buffers();
  twice.push_back(twice[1]);
  twice.back().name = "b again";
  try {
    GradientReducer reducer(comm, twice);
    FAIL() << "duplicate accepted";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "GradientReducer: gradient 'b again' is listed twice (same buffer)");
  }
  std::vector<GradientBuffer> empty = {{g.b3.data(), 0, "zero"}};
  EXPECT_THROW(GradientReducer(comm, empty), Error);
  EXPECT_THROW(GradientReducer(comm, g.buffers(), 0), Error);

  GradientReducer reducer(comm, g.buffers(), 35 * sizeof(float));
  reducer.start(3);
  try {
    reducer.start(3);
    FAIL() << "double start accepted";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "GradientReducer::start: gradient 'd' started twice in one step");
  }
  EXPECT_THROW(reducer.start(5), Error);
  reducer.finish();
  EXPECT_NO_THROW(reducer.start(3));  // a new step
  reducer.finish();
}

TEST(GradientReducer, TakesTheOptimizersSlots) {
  std::vector<float> w(6), gw(6, 0.5f), b(2), gb(2, 0.25f);
  std::vector<ParamSlot> slots = {{"layer.weight", {2, 3}, w.data(), gw.data(), true},
                                  {"layer.bias", {2}, b.data(), gb.data(), false}};
  const std::vector<GradientBuffer> buffers = gradient_buffers(slots);
  ASSERT_EQ(buffers.size(), 2u);
  EXPECT_EQ(buffers[0].data, gw.data());
  EXPECT_EQ(buffers[0].n, 6u);
  EXPECT_EQ(buffers[0].name, "layer.weight");
  EXPECT_EQ(buffers[1].data, gb.data());
  EXPECT_EQ(buffers[1].n, 2u);
}

}  // namespace
}  // namespace cepe::train
