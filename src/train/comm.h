#pragma once
// The data-parallel communication seam of the trainer (docs/training.md, "Data parallelism"): a communicator
// interface that the trainer codes against, a single-process implementation (always built), an MPI one
// (comm_mpi.cpp, built with CEPE_HAVE_MPI), and the bucketed gradient reducer on top. An NCCL communicator for
// GPUs would be a third implementation of the same interface (device pointers in, a CUDA stream per reduction).
//
// Every collective must be called by every rank, in the same order, with the same sizes and roots: that is
// what MPI requires, and the reducer below keeps it true even when the trainer starts buckets out of order.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace cepe::train {

struct ParamSlot;

// An in-flight in-place sum; wait() completes it (no-op when already complete). Destroying one that was not
// waited for waits too (the buffer is in use until then) but swallows its error: the communicator keeps it and
// throws it again from its next call.
class PendingReduce {
 public:
  virtual ~PendingReduce() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const char* backend() const = 0;  // "single", "mpi"
  // In-place element-wise sum over all ranks. Every rank ends with the same bits (see comm_mpi.cpp for how).
  virtual void allreduce_sum(float* data, size_t n) = 0;
  virtual void allreduce_sum(double* data, size_t n) = 0;
  virtual void allreduce_sum(int64_t* data, size_t n) = 0;
  // The float sum, started now and completed by wait(); `data` must stay untouched until then. Reductions
  // complete in the order they were started.
  virtual std::unique_ptr<PendingReduce> allreduce_sum_async(float* data, size_t n) = 0;
  // Root's `bytes` bytes copied into every rank's `data`.
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Every rank's `value` (e.g. a status flag): lets ranks agree to stop together on an error.
  virtual std::vector<int64_t> allgather(int64_t value) = 0;
};

// MPI when the process was started by mpirun/mpiexec (OMPI_COMM_WORLD_SIZE etc. in the environment) and the
// build has MPI; otherwise the single-process communicator. Calls MPI_Init_thread once; finalizes at exit
// (unless communication_failed() was called or a communicator died in an exception, see below). Started by
// mpirun with more than one process in a build without MPI is an error: each process would train alone.
// CEPE_COMM_TIMEOUT_S (seconds, default 600, 0 = never) bounds how long one MPI collective may wait for the
// other ranks before it throws.
std::unique_ptr<Communicator> make_communicator();
bool built_with_mpi();

// The single-process communicator (rank 0 of 1): sums are the identity, async reductions complete at once.
std::unique_ptr<Communicator> make_single_communicator();

// Says that this process is about to exit on an error: MPI_Finalize is then skipped at exit, because it waits
// for every rank and the others may be blocked in a collective that this rank will never join. mpirun sees a
// rank end without finalizing and terminates the others with its own message. It is called automatically when
// an MPI communicator is destroyed while an exception unwinds the stack or after one of its calls failed; the
// CLI calls it on any error path. A no-op without MPI.
void communication_failed();

// The agreement step that lets ranks stop together: every rank says whether it is fine (one allgather); if any
// is not, every rank throws "rank 1 of 2 failed during <what>" (a failed rank has usually reported its own
// error first). Call it before the next collective whenever a rank may have failed locally (loading data,
// a non-finite loss), so that the others do not wait in that collective for a rank that will never come.
void throw_if_any_rank_failed(Communicator& comm, bool ok, std::string_view what);

// One gradient buffer: `n` contiguous floats that the trainer owns; `name` for messages.
struct GradientBuffer {
  float* data = nullptr;
  size_t n = 0;
  std::string name;
};

// The trainer's gradients as buffers, in the slots' order.
std::vector<GradientBuffer> gradient_buffers(const std::vector<ParamSlot>& params);

// Sums a fixed list of gradient buffers over all ranks in fp32, in buckets of about `bucket_bytes` (PyTorch
// DDP's 25 MiB by default): consecutive buffers are grouped until a bucket would exceed the size (a larger
// buffer gets a bucket of its own). List the buffers in the order the backward pass finishes them (last layer
// first) so that buckets fill in order. A bucket whose buffers lie back to back in memory is reduced in place;
// otherwise it is packed into a flat buffer and unpacked after. Results do not depend on the order or timing of
// start() calls: buckets are always launched in index order (an earlier bucket that is not ready holds back the
// later ones), so every rank issues the same collectives in the same order, and each bucket is the same sum.
// Not thread-safe: call from one thread.
class GradientReducer {
 public:
  static constexpr size_t kDefaultBucketBytes = size_t{25} << 20;

  // Throws on a null or empty buffer, a duplicate buffer, or bucket_bytes == 0.
  GradientReducer(Communicator& comm, std::vector<GradientBuffer> buffers,
                  size_t bucket_bytes = kDefaultBucketBytes);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Buffer i's gradient is final for this step: its bucket starts reducing as soon as all its buffers are
  // final and every earlier bucket has started. Starting a buffer twice in one step is an error.
  void start(size_t i);
  // Starts whatever was not started, waits for every bucket and writes the sums back: after it every buffer
  // holds the sum over ranks. The next step begins (every buffer unstarted).
  void finish();
  // start(i) for every buffer, then finish().
  void reduce_all();

  size_t buffer_count() const { return buffers_.size(); }
  size_t bucket_count() const { return buckets_.size(); }
  size_t bucket_of(size_t buffer) const { return bucket_of_.at(buffer); }
  // How many buckets are reducing or done in this step (for tests and overlap statistics).
  size_t buckets_launched() const { return next_launch_; }

 private:
  struct Bucket {
    size_t first = 0, last = 0;  // buffers [first, last)
    size_t elements = 0;
    bool contiguous = false;      // buffers back to back: reduced in place, no packing
    std::vector<float> flat;      // packed copy when not contiguous
    size_t pending_buffers = 0;   // buffers not yet started in this step
    std::unique_ptr<PendingReduce> in_flight;
  };
  void launch_ready_buckets();
  void reset_step();

  Communicator& comm_;
  std::vector<GradientBuffer> buffers_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;
  std::vector<bool> started_;
  size_t next_launch_ = 0;
};

}  // namespace cepe::train
