#include "train/comm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <set>

#include "cepe/error.h"
#include "train/optimizer.h"

namespace cepe::train {

#ifdef CEPE_HAVE_MPI
// comm_mpi.cpp
std::unique_ptr<Communicator> make_mpi_communicator();
void mpi_communication_failed();
#endif

namespace {

class CompletedReduce final : public PendingReduce {
 public:
  void wait() override {}
};

void check_buffer(const void* data, size_t n, const char* op) {
  check(data != nullptr || n == 0, [&] { return std::string(op) + ": null buffer of " + std::to_string(n) + " elements"; });
}

class SingleCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const char* backend() const override { return "single"; }
  void allreduce_sum(float* data, size_t n) override { check_buffer(data, n, "allreduce_sum"); }
  void allreduce_sum(double* data, size_t n) override { check_buffer(data, n, "allreduce_sum"); }
  void allreduce_sum(int64_t* data, size_t n) override { check_buffer(data, n, "allreduce_sum"); }
  std::unique_ptr<PendingReduce> allreduce_sum_async(float* data, size_t n) override {
    check_buffer(data, n, "allreduce_sum_async");
    return std::make_unique<CompletedReduce>();
  }
  void broadcast(void* data, size_t bytes, int root) override {
    check_buffer(data, bytes, "broadcast");
    check(root == 0, [&] { return "broadcast: root " + std::to_string(root) + " out of range for 1 rank"; });
  }
  void barrier() override {}
  std::vector<int64_t> allgather(int64_t value) override { return {value}; }
};

// The world size the launcher announced, or 0 when the process was not started by one. OpenMPI's mpirun sets
// OMPI_COMM_WORLD_SIZE; MPICH's hydra and Slurm's PMI set PMI_SIZE; PMIx launchers (srun --mpi=pmix) set PMIX_RANK.
int launcher_world_size() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
    if (const char* v = std::getenv(var); v && *v) return std::max(1, std::atoi(v));
  }
  if (const char* v = std::getenv("PMIX_RANK"); v && *v) return 1;  // size unknown until MPI_Init; at least 1
  return 0;
}

}  // namespace

bool built_with_mpi() {
#ifdef CEPE_HAVE_MPI
  return true;
#else
  return false;
#endif
}

std::unique_ptr<Communicator> make_single_communicator() { return std::make_unique<SingleCommunicator>(); }

std::unique_ptr<Communicator> make_communicator() {
  const int launched = launcher_world_size();
#ifdef CEPE_HAVE_MPI
  if (launched > 0) return make_mpi_communicator();
#else
  check(launched <= 1, [&] {
    return "started by an MPI launcher with " + std::to_string(launched) +
           " processes, but this build has no MPI (install libopenmpi-dev and rebuild): each process would "
           "train alone";
  });
#endif
  return make_single_communicator();
}

void communication_failed() {
#ifdef CEPE_HAVE_MPI
  mpi_communication_failed();
#endif
}

void throw_if_any_rank_failed(Communicator& comm, bool ok, std::string_view what) {
  const std::vector<int64_t> status = comm.allgather(ok ? 0 : 1);
  std::string failed;
  for (size_t r = 0; r < status.size(); ++r) {
    if (status[r] != 0) failed += (failed.empty() ? "" : ", ") + std::to_string(r);
  }
  if (failed.empty()) return;
  throw Error((failed.find(',') == std::string::npos ? "rank " : "ranks ") + failed + " of " +
              std::to_string(comm.size()) + " failed during " + std::string(what));
}

std::vector<GradientBuffer> gradient_buffers(const std::vector<ParamSlot>& params) {
  std::vector<GradientBuffer> buffers;
  buffers.reserve(params.size());
  for (const ParamSlot& p : params) buffers.push_back({p.grad, static_cast<size_t>(p.numel()), p.name});
  return buffers;
}

// ---- GradientReducer ----

GradientReducer::GradientReducer(Communicator& comm, std::vector<GradientBuffer> buffers, size_t bucket_bytes)
    : comm_(comm), buffers_(std::move(buffers)) {
  check(bucket_bytes > 0, "GradientReducer: bucket size must be > 0 bytes");
  std::set<const float*> seen;
  for (const GradientBuffer& b : buffers_) {
    check(b.data != nullptr && b.n > 0, [&] { return "GradientReducer: gradient '" + b.name + "' is null or empty"; });
    check(seen.insert(b.data).second,
          [&] { return "GradientReducer: gradient '" + b.name + "' is listed twice (same buffer)"; });
  }
  const size_t bucket_elements = std::max<size_t>(1, bucket_bytes / sizeof(float));
  bucket_of_.resize(buffers_.size());
  for (size_t i = 0; i < buffers_.size();) {
    Bucket bucket;
    bucket.first = i;
    bucket.contiguous = true;
    do {
      if (i > bucket.first) {
        const GradientBuffer& prev = buffers_[i - 1];
        bucket.contiguous = bucket.contiguous && prev.data + prev.n == buffers_[i].data;
      }
      bucket.elements += buffers_[i].n;
      bucket_of_[i] = buckets_.size();
      ++i;
    } while (i < buffers_.size() && bucket.elements + buffers_[i].n <= bucket_elements);
    bucket.last = i;
    if (!bucket.contiguous) bucket.flat.resize(bucket.elements);
    buckets_.push_back(std::move(bucket));
  }
  started_.assign(buffers_.size(), false);
  reset_step();
}

GradientReducer::~GradientReducer() {
  // In-flight reductions write into the buffers until they complete: wait for them (errors are swallowed by
  // PendingReduce's destructor and reported by the communicator's next call).
  for (Bucket& b : buckets_) b.in_flight.reset();
}

void GradientReducer::reset_step() {
  std::fill(started_.begin(), started_.end(), false);
  for (Bucket& b : buckets_) {
    b.pending_buffers = b.last - b.first;
    b.in_flight.reset();
  }
  next_launch_ = 0;
}

void GradientReducer::start(size_t i) {
  check(i < buffers_.size(), [&] {
    return "GradientReducer::start: buffer " + std::to_string(i) + " out of range (" +
           std::to_string(buffers_.size()) + " buffers)";
  });
  check(!started_[i], [&] { return "GradientReducer::start: gradient '" + buffers_[i].name + "' started twice in one step"; });
  started_[i] = true;
  --buckets_[bucket_of_[i]].pending_buffers;
  launch_ready_buckets();
}

void GradientReducer::launch_ready_buckets() {
  // In index order only, so that every rank issues the same reductions in the same order whatever order the
  // trainer finishes its gradients in.
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending_buffers == 0) {
    Bucket& b = buckets_[next_launch_];
    float* data = buffers_[b.first].data;
    if (!b.contiguous) {
      size_t offset = 0;
      for (size_t k = b.first; k < b.last; ++k) {
        std::memcpy(b.flat.data() + offset, buffers_[k].data, buffers_[k].n * sizeof(float));
        offset += buffers_[k].n;
      }
      data = b.flat.data();
    }
    b.in_flight = comm_.allreduce_sum_async(data, b.elements);
    ++next_launch_;
  }
}

void GradientReducer::finish() {
  for (size_t i = 0; i < buffers_.size(); ++i) {
    if (!started_[i]) {
      started_[i] = true;
      --buckets_[bucket_of_[i]].pending_buffers;
    }
  }
  launch_ready_buckets();
  try {
    for (Bucket& b : buckets_) {
      b.in_flight->wait();
      b.in_flight.reset();
      if (!b.contiguous) {
        size_t offset = 0;
        for (size_t k = b.first; k < b.last; ++k) {
          std::memcpy(buffers_[k].data, b.flat.data() + offset, buffers_[k].n * sizeof(float));
          offset += buffers_[k].n;
        }
      }
    }
  } catch (...) {
    reset_step();
    throw;
  }
  reset_step();
}

void GradientReducer::reduce_all() { finish(); }  // finish() starts every buffer not started yet

}  // namespace cepe::train
