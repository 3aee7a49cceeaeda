// The MPI communicator (built with CEPE_HAVE_MPI; docs/training.md, "Data parallelism").
//
// Identical bits on every rank. MPI requires that every rank of an MPI_Allreduce receive identical results
// (MPI 4.1 §6.9.6), but implementations have shipped algorithms that add the same numbers in a different order
// on different ranks (MPICH's recexch, fixed in 2023; Open MPI's allgather-reduce allreduce, discussed in
// open-mpi/ompi#12258), Open MPI picks its algorithm by message size and communicator size through components
// (tuned, han, adapt, libnbc for non-blocking calls) that a user's MCA settings can change, and no
// implementation promises an order. So the float and double sums here do not use MPI's reductions at all: they
// are a ring reduce-scatter followed by a ring allgather over point-to-point messages. Block b of the vector
// is summed exactly once, on one rank, in the fixed order a_b + a_{b+1} + ... (ranks mod p, left to right), and
// then copied as bytes to every other rank: identical bits by construction, and the same bits on every run
// with the same rank count and sizes, whatever MPI library or tuning is underneath. The cost is the ring's:
// every rank sends and receives 2(p-1)/p of the vector (bandwidth-optimal, what Open MPI's own ring allreduce
// does for large messages) in 2(p-1) steps (latency worse than recursive doubling for small vectors on many
// ranks, irrelevant for gradient buckets). Broadcast, barrier and allgather only copy, so they use MPI's.
//
// Overlap. Open MPI progresses a non-blocking operation only inside MPI calls, so a reduction started with
// MPI_I* would sit idle while the trainer computes. Every MPI call of a communicator therefore runs on its own
// communication thread, in submission order (which keeps every rank's sequence of collectives the same); the
// caller's thread only queues work and waits. MPI is initialised with MPI_THREAD_SERIALIZED and one global
// lock serialises the MPI calls of all communicators.
//
// Failure. Every wait polls its requests (yielding the core between polls) against a deadline,
// CEPE_COMM_TIMEOUT_S seconds (default 600; 0 waits forever): a rank that waits longer for the others throws
// a cepe::Error naming the operation, and after any failure the communicator refuses further work (its ranks'
// sequences of collectives no longer match). A rank that throws must not call MPI_Finalize, which waits for
// every rank: communication_failed() (called for it when a communicator is destroyed by an exception or
// after a failure) skips it, and mpirun, seeing a rank end without finalizing or with a non-zero status,
// terminates the others.
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "cepe/error.h"
#include "train/comm.h"

namespace cepe::train {

namespace {

std::mutex g_init_mutex;
bool g_initialized_here = false;
std::atomic<bool> g_failed{false};
// MPI_THREAD_SERIALIZED: at most one thread in MPI at a time, across every communicator.
std::mutex g_mpi_call_mutex;

void finalize_at_exit() {
  if (g_failed.load()) return;  // other ranks may be blocked in a collective this rank will never join
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<size_t>(length));
}

void init_mpi_once() {
  std::lock_guard<std::mutex> lock(g_init_mutex);
  int initialized = 0;
  MPI_Initialized(&initialized);
  int provided = 0;
  if (!initialized) {
    const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
    check(rc == MPI_SUCCESS, [&] { return "mpi: MPI_Init_thread failed: " + mpi_error_text(rc); });
    g_initialized_here = true;
    std::atexit(finalize_at_exit);
  } else {
    MPI_Query_thread(&provided);
  }
  check(provided >= MPI_THREAD_SERIALIZED, [&] {
    return "mpi: the MPI library gives thread level " + std::to_string(provided) +
           ", the communication thread needs MPI_THREAD_SERIALIZED";
  });
}

double timeout_from_environment() {
  const char* text = std::getenv("CEPE_COMM_TIMEOUT_S");
  if (!text || !*text) return 600.0;
  char* end = nullptr;
  const double seconds = std::strtod(text, &end);
  check(end != text && *end == '\0' && seconds >= 0 && seconds < 1e9,
        [&] { return std::string("CEPE_COMM_TIMEOUT_S: expected seconds >= 0, got '") + text + "'"; });
  return seconds;
}

template <class T> MPI_Datatype mpi_type();
template <> MPI_Datatype mpi_type<float>() { return MPI_FLOAT; }
template <> MPI_Datatype mpi_type<double>() { return MPI_DOUBLE; }
template <> MPI_Datatype mpi_type<int64_t>() { return MPI_INT64_T; }
template <class T> const char* type_name();
template <> const char* type_name<float>() { return "floats"; }
template <> const char* type_name<double>() { return "doubles"; }
template <> const char* type_name<int64_t>() { return "int64s"; }

// One queued operation: run on the communication thread, waited for by the caller.
struct Job {
  std::function<void()> run;
  std::mutex mutex;
  std::condition_variable cv;
  bool done = false;
  std::exception_ptr error;

  void wait() {
    std::unique_lock<std::mutex> lock(mutex);
    cv.wait(lock, [&] { return done; });
  }
};

// What the communication thread needs; shared with it so that an abandoned thread never outlives it.
struct State {
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0, size = 1;
  double timeout_s = 600.0;
  std::mutex mutex;  // guards the fields below
  std::condition_variable cv;
  std::deque<std::shared_ptr<Job>> queue;
  bool stopping = false;
  std::string failure;  // the first failed operation's message; non-empty = unusable
  std::atomic<bool> abandon{false};
  std::vector<unsigned char> scratch;  // the ring's receive buffer (communication thread only)
};

class MpiPendingReduce final : public PendingReduce {
 public:
  explicit MpiPendingReduce(std::shared_ptr<Job> job) : job_(std::move(job)) {}
  ~MpiPendingReduce() override {
    if (job_) job_->wait();  // the buffer is in use until the job ends; its error stays with the communicator
  }
  void wait() override {
    if (!job_) return;
    job_->wait();
    std::exception_ptr error = job_->error;
    job_.reset();
    if (error) std::rethrow_exception(error);
  }

 private:
  std::shared_ptr<Job> job_;
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() : state_(std::make_shared<State>()), uncaught_at_start_(std::uncaught_exceptions()) {
    init_mpi_once();
    state_->timeout_s = timeout_from_environment();
    {
      std::lock_guard<std::mutex> lock(g_mpi_call_mutex);
      // A communicator of our own: our messages never meet another library's, and errors come back as codes
      // (MPI_COMM_WORLD's default handler aborts the job without a word about what was being done).
      int rc = MPI_Comm_dup(MPI_COMM_WORLD, &state_->comm);
      check(rc == MPI_SUCCESS, [&] { return "mpi: MPI_Comm_dup failed: " + mpi_error_text(rc); });
      MPI_Comm_set_errhandler(state_->comm, MPI_ERRORS_RETURN);
      MPI_Comm_rank(state_->comm, &state_->rank);
      MPI_Comm_size(state_->comm, &state_->size);
    }
    thread_ = std::thread(run_thread, state_);
  }

  ~MpiCommunicator() override {
    const bool failing = std::uncaught_exceptions() > uncaught_at_start_ || !failure().empty();
    if (failing) {
      g_failed = true;
      state_->abandon = true;  // stop polling: the others are not coming
    }
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      state_->stopping = true;
    }
    state_->cv.notify_all();
    thread_.join();
    if (failing) {
      // Requests may still be posted on the scratch buffer: keep the state alive on purpose (a small leak on the
      // way out of a failed process), and skip MPI_Comm_free (MPI will not be finalized).
      new std::shared_ptr<State>(state_);
      return;
    }
    std::lock_guard<std::mutex> lock(g_mpi_call_mutex);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&state_->comm);
  }

  int rank() const override { return state_->rank; }
  int size() const override { return state_->size; }
  const char* backend() const override { return "mpi"; }

  void allreduce_sum(float* data, size_t n) override { sum(data, n); }
  void allreduce_sum(double* data, size_t n) override { sum(data, n); }
  void allreduce_sum(int64_t* data, size_t n) override { sum(data, n); }

  std::unique_ptr<PendingReduce> allreduce_sum_async(float* data, size_t n) override {
    check_buffer(data, n, "allreduce_sum_async");
    State* s = state_.get();
    return std::make_unique<MpiPendingReduce>(submit([s, data, n] { ring_allreduce(*s, data, n); }));
  }

  void broadcast(void* data, size_t bytes, int root) override {
    check_buffer(data, bytes, "broadcast");
    check(root >= 0 && root < size(), [&] {
      return "broadcast: root " + std::to_string(root) + " out of range for " + std::to_string(size()) + " ranks";
    });
    State* s = state_.get();
    run_sync([s, data, bytes, root] {
      // MPI counts are int: large broadcasts (whole checkpoints) go in 1 GiB pieces.
      constexpr size_t piece = size_t{1} << 30;
      for (size_t offset = 0; offset < bytes; offset += piece) {
        MPI_Request request;
        const int count = static_cast<int>(std::min(piece, bytes - offset));
        {
          std::lock_guard<std::mutex> lock(g_mpi_call_mutex);
          post(*s, "broadcast", MPI_Ibcast(static_cast<char*>(data) + offset, count, MPI_BYTE, root, s->comm, &request));
        }
        wait_all(*s, &request, 1, [&] { return "broadcast of " + std::to_string(bytes) + " bytes from rank " + std::to_string(root); });
      }
    });
  }

  void barrier() override {
    State* s = state_.get();
    run_sync([s] {
      MPI_Request request;
      {
        std::lock_guard<std::mutex> lock(g_mpi_call_mutex);
        post(*s, "barrier", MPI_Ibarrier(s->comm, &request));
      }
      wait_all(*s, &request, 1, [] { return std::string("barrier"); });
    });
  }

  std::vector<int64_t> allgather(int64_t value) override {
    std::vector<int64_t> values(static_cast<size_t>(size()));
    State* s = state_.get();
    run_sync([s, &values, value] {
      MPI_Request request;
      {
        std::lock_guard<std::mutex> lock(g_mpi_call_mutex);
        post(*s, "allgather", MPI_Iallgather(&value, 1, MPI_INT64_T, values.data(), 1, MPI_INT64_T, s->comm, &request));
      }
      wait_all(*s, &request, 1, [] { return std::string("allgather"); });
    });
    return values;
  }

 private:
  static void check_buffer(const void* data, size_t n, const char* op) {
    check(data != nullptr || n == 0, [&] { return std::string(op) + ": null buffer of " + std::to_string(n) + " elements"; });
  }

  std::string failure() const {
    std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->failure;
  }

  template <class T> void sum(T* data, size_t n) {
    check_buffer(data, n, "allreduce_sum");
    State* s = state_.get();
    run_sync([s, data, n] { ring_allreduce(*s, data, n); });
  }

  std::shared_ptr<Job> submit(std::function<void()> run) {
    auto job = std::make_shared<Job>();
    job->run = std::move(run);
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      check(state_->failure.empty(),
            [&] { return "mpi: communicator unusable after an earlier failure (" + state_->failure + ")"; });
      state_->queue.push_back(job);
    }
    state_->cv.notify_all();
    return job;
  }

  void run_sync(std::function<void()> run) {
    std::shared_ptr<Job> job = submit(std::move(run));
    job->wait();
    if (job->error) std::rethrow_exception(job->error);
  }

  static void run_thread(std::shared_ptr<State> state) {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(state->mutex);
        state->cv.wait(lock, [&] { return state->stopping || !state->queue.empty(); });
        if (state->queue.empty()) return;  // stopping, nothing left
        job = state->queue.front();
        state->queue.pop_front();
      }
      std::string failure;
      {
        std::lock_guard<std::mutex> lock(state->mutex);
        failure = state->failure;
      }
      try {
        // After a failure the ranks' sequences of collectives no longer match: fail whatever was queued.
        check(failure.empty(), [&] { return "mpi: communicator unusable after an earlier failure (" + failure + ")"; });
        check(!state->abandon.load(), "mpi: communicator destroyed before the operation ran");
        job->run();
      } catch (const std::exception& e) {
        job->error = std::current_exception();
        std::lock_guard<std::mutex> lock(state->mutex);
        if (state->failure.empty()) state->failure = e.what();
        g_failed = true;  // no MPI_Finalize at exit: it would wait for ranks stuck in a collective
      }
      {
        std::lock_guard<std::mutex> lock(job->mutex);
        job->done = true;
      }
      job->cv.notify_all();
    }
  }

  static void post(State& s, const char* what, int rc) {
    check(rc == MPI_SUCCESS, [&] {
      return "mpi: " + std::string(what) + " on rank " + std::to_string(s.rank) + " of " + std::to_string(s.size) +
             " failed: " + mpi_error_text(rc);
    });
  }

  // Polls until every request completes, the deadline passes or the communicator is abandoned.
  template <class Describe> static void wait_all(State& s, MPI_Request* requests, int count, Describe&& describe) {
    using clock = std::chrono::steady_clock;
    const auto started = clock::now();
    for (unsigned polls = 0;; ++polls) {
      int complete = 0;
      int rc;
      {
        std::lock_guard<std::mutex> lock(g_mpi_call_mutex);
        rc = MPI_Testall(count, requests, &complete, MPI_STATUSES_IGNORE);
      }
      check(rc == MPI_SUCCESS, [&] {
        return "mpi: " + describe() + " on rank " + std::to_string(s.rank) + " of " + std::to_string(s.size) +
               " failed: " + mpi_error_text(rc) + " (do all ranks call the same collectives with the same sizes?)";
      });
      if (complete) return;
      check(!s.abandon.load(), [&] { return "mpi: " + describe() + " abandoned (communicator destroyed)"; });
      if (s.timeout_s > 0 && polls % 256 == 0) {
        const double waited = std::chrono::duration<double>(clock::now() - started).count();
        check(waited <= s.timeout_s, [&] {
          char seconds[32];
          std::snprintf(seconds, sizeof seconds, "%g", s.timeout_s);
          return "mpi: " + describe() + " on rank " + std::to_string(s.rank) + " of " + std::to_string(s.size) +
                 " not complete after " + seconds +
                 " s (CEPE_COMM_TIMEOUT_S): another rank has failed or is stuck";
        });
      }
      std::this_thread::yield();
    }
  }

  // In-place sum: ring reduce-scatter, then ring allgather (see the top of the file for why and what it costs).
  // Block b (of p nearly equal blocks) is summed along the ring starting at rank b and ends complete on rank
  // b - 1 (mod p); the allgather forwards each complete block around the ring.
  template <class T> static void ring_allreduce(State& s, T* data, size_t n) {
    const int p = s.size;
    if (p == 1 || n == 0) return;
    const size_t base = n / static_cast<size_t>(p), extra = n % static_cast<size_t>(p);
    auto block_offset = [&](int b) { return static_cast<size_t>(b) * base + std::min<size_t>(static_cast<size_t>(b), extra); };
    auto block_count = [&](int b) { return base + (static_cast<size_t>(b) < extra ? 1 : 0); };
    check(block_count(0) <= static_cast<size_t>(INT_MAX), [&] {
      return "allreduce_sum: " + std::to_string(n) + " elements are too many for " + std::to_string(p) + " ranks";
    });
    auto describe = [&] { return "allreduce_sum of " + std::to_string(n) + " " + type_name<T>(); };
    const int right = (s.rank + 1) % p, left = (s.rank + p - 1) % p;
    s.scratch.resize(block_count(0) * sizeof(T));
    T* incoming = reinterpret_cast<T*>(s.scratch.data());
    MPI_Request requests[2];

    for (int step = 0; step < p - 1; ++step) {
      const int send_block = (s.rank - step + 2 * p) % p, recv_block = (s.rank - step - 1 + 2 * p) % p;
      {
        std::lock_guard<std::mutex> lock(g_mpi_call_mutex);
        post(s, "allreduce_sum", MPI_Irecv(incoming, static_cast<int>(block_count(recv_block)), mpi_type<T>(), left, 0, s.comm, &requests[0]));
        post(s, "allreduce_sum", MPI_Isend(data + block_offset(send_block), static_cast<int>(block_count(send_block)), mpi_type<T>(), right, 0, s.comm, &requests[1]));
      }
      wait_all(s, requests, 2, describe);
      T* mine = data + block_offset(recv_block);
      const size_t count = block_count(recv_block);
      for (size_t i = 0; i < count; ++i) mine[i] = incoming[i] + mine[i];  // partial sum of ranks b..left, then ours
    }
    for (int step = 0; step < p - 1; ++step) {
      const int send_block = (s.rank + 1 - step + 2 * p) % p, recv_block = (s.rank - step + 2 * p) % p;
      {
        std::lock_guard<std::mutex> lock(g_mpi_call_mutex);
        post(s, "allreduce_sum", MPI_Irecv(data + block_offset(recv_block), static_cast<int>(block_count(recv_block)), mpi_type<T>(), left, 1, s.comm, &requests[0]));
        post(s, "allreduce_sum", MPI_Isend(data + block_offset(send_block), static_cast<int>(block_count(send_block)), mpi_type<T>(), right, 1, s.comm, &requests[1]));
      }
      wait_all(s, requests, 2, describe);
    }
  }

  std::shared_ptr<State> state_;
  int uncaught_at_start_;
  std::thread thread_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<MpiCommunicator>(); }

void mpi_communication_failed() { g_failed = true; }

}  // namespace cepe::train
