// The MPI communicator and the gradient reducer across real processes (run by tests/mpi_test.sh under
// `mpirun -np N`, registered in ctest as `mpi.*`). Every rank can compute every rank's inputs, so each checks
// its results against the sum in the documented ring order (comm_mpi.cpp) bit for bit, and the ranks compare
// hashes of everything they computed to prove that they hold identical bits.
//
//   cepe_mpi_check all    every check; exit 0 when all pass
//   cepe_mpi_check fail   the last rank throws before a collective that the others are already in
//   cepe_mpi_check hang   the last rank sleeps 30 s before a barrier (run with a short CEPE_COMM_TIMEOUT_S)
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cepe/error.h"
#include "train/comm.h"

using cepe::train::Communicator;
using cepe::train::GradientBuffer;
using cepe::train::GradientReducer;

namespace {

int g_failures = 0;
int g_rank = 0;
uint64_t g_hash = 1469598103934665603ull;  // FNV-1a of every result this rank computed

#define EXPECT(cond, ...)                                       \
  do {                                                          \
    if (!(cond)) {                                              \
      std::fprintf(stderr, "rank %d: FAILED %s: ", g_rank, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                        \
      std::fprintf(stderr, "\n");                               \
      ++g_failures;                                             \
    }                                                           \
  } while (0)

void hash_bytes(const void* data, size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) g_hash = (g_hash ^ p[i]) * 1099511628211ull;
}

uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Rank r's input element i of stream `stream`: signed, with exponents over ±2^10 so that the order of the
// additions shows in the rounding.
template <class T> T input(int rank, uint64_t stream, size_t i) {
  const uint64_t h = mix(mix(stream * 1000003u + static_cast<uint64_t>(rank)) ^ i);
  const double unit = static_cast<double>(h >> 11) / 9007199254740992.0 - 0.5;
  return static_cast<T>(std::ldexp(unit, static_cast<int>(h % 21) - 10));
}

// The documented order: element i of an n-vector lies in block b (p near-equal blocks, the first n % p one
// longer); its sum starts at rank b and adds ranks b+1, b+2, ... (mod p) left to right.
template <class T> T ring_sum(int p, size_t n, size_t i, uint64_t stream) {
  const size_t base = n / static_cast<size_t>(p), extra = n % static_cast<size_t>(p);
  int b = 0;
  while (b + 1 < p && i >= static_cast<size_t>(b + 1) * base + std::min<size_t>(static_cast<size_t>(b + 1), extra)) ++b;
  T acc = input<T>(b, stream, i);
  for (int k = 1; k < p; ++k) acc = acc + input<T>((b + k) % p, stream, i);
  return acc;
}

template <class T> void check_allreduce(Communicator& comm, size_t n, uint64_t stream) {
  std::vector<T> data(n);
  for (size_t i = 0; i < n; ++i) data[i] = input<T>(comm.rank(), stream, i);
  comm.allreduce_sum(data.data(), n);
  size_t wrong = 0;
  for (size_t i = 0; i < n; ++i) {
    const T expected = ring_sum<T>(comm.size(), n, i, stream);
    if (std::memcmp(&expected, &data[i], sizeof(T)) != 0 && wrong++ == 0)
      EXPECT(false, "allreduce_sum<%zu-byte> n=%zu element %zu: %.17g, expected %.17g", sizeof(T), n, i,
             static_cast<double>(data[i]), static_cast<double>(expected));
  }
  EXPECT(wrong == 0, "%zu of %zu elements differ", wrong, n);
  hash_bytes(data.data(), n * sizeof(T));
}

void check_int64(Communicator& comm) {
  std::vector<int64_t> data(1001);
  for (size_t i = 0; i < data.size(); ++i) data[i] = (int64_t{1} << 40) * (comm.rank() + 1) - static_cast<int64_t>(i);
  comm.allreduce_sum(data.data(), data.size());
  const int64_t p = comm.size();
  for (size_t i = 0; i < data.size(); ++i) {
    const int64_t expected = (int64_t{1} << 40) * p * (p + 1) / 2 - p * static_cast<int64_t>(i);
    if (data[i] != expected) {
      EXPECT(false, "int64 element %zu: %" PRId64 ", expected %" PRId64, i, data[i], expected);
      break;
    }
  }
  hash_bytes(data.data(), data.size() * sizeof(int64_t));
}

void check_async(Communicator& comm) {
  const size_t n1 = 50000, n2 = 333;
  std::vector<float> a(n1), b(n2);
  for (size_t i = 0; i < n1; ++i) a[i] = input<float>(comm.rank(), 21, i);
  for (size_t i = 0; i < n2; ++i) b[i] = input<float>(comm.rank(), 22, i);
  auto pa = comm.allreduce_sum_async(a.data(), n1);
  auto pb = comm.allreduce_sum_async(b.data(), n2);
  pb->wait();  // waited out of order: completion is in start order, so a is done too
  pa->wait();
  pa->wait();  // a second wait is a no-op
  for (size_t i = 0; i < n1; ++i) {
    if (a[i] != ring_sum<float>(comm.size(), n1, i, 21)) { EXPECT(false, "async a[%zu]", i); break; }
  }
  for (size_t i = 0; i < n2; ++i) {
    if (b[i] != ring_sum<float>(comm.size(), n2, i, 22)) { EXPECT(false, "async b[%zu]", i); break; }
  }
  hash_bytes(a.data(), n1 * sizeof(float));
  hash_bytes(b.data(), n2 * sizeof(float));
}

void check_broadcast_allgather_barrier(Communicator& comm) {
  const int root = comm.size() - 1;
  std::vector<unsigned char> bytes(12345);
  for (size_t i = 0; i < bytes.size(); ++i)
    bytes[i] = comm.rank() == root ? static_cast<unsigned char>(mix(i) & 0xff) : 0;
  comm.broadcast(bytes.data(), bytes.size(), root);
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (bytes[i] != static_cast<unsigned char>(mix(i) & 0xff)) { EXPECT(false, "broadcast byte %zu", i); break; }
  }
  const std::vector<int64_t> all = comm.allgather(100 + int64_t{comm.rank()} * comm.rank());
  EXPECT(all.size() == static_cast<size_t>(comm.size()), "allgather size %zu", all.size());
  for (size_t r = 0; r < all.size(); ++r)
    EXPECT(all[r] == 100 + static_cast<int64_t>(r * r), "allgather[%zu] = %" PRId64, r, all[r]);
  comm.barrier();
  // The agreement helper: fine when every rank is, a throw on every rank when one is not.
  cepe::train::throw_if_any_rank_failed(comm, true, "a good step");
  std::string message;
  try {
    cepe::train::throw_if_any_rank_failed(comm, comm.rank() != root, "step 12");
  } catch (const cepe::Error& e) {
    message = e.what();
  }
  const std::string expected = "rank " + std::to_string(root) + " of " + std::to_string(comm.size()) + " failed during step 12";
  EXPECT(message == expected, "agreement message '%s'", message.c_str());
}

// Ten gradients, some back to back in one arena (reduced in place), some separate (packed), in buckets of
// 4 KiB. Each rank starts them in its own order (rank 0 forward, rank 1 backward, others interleaved): the
// reducer launches buckets in index order regardless, so the sums are right and identical to reduce_all()'s.
void check_reducer(Communicator& comm) {
  const std::vector<size_t> sizes = {300, 700, 5, 1500, 1024, 3000, 17, 900, 2, 4096};
  std::vector<float> arena(300 + 700 + 5 + 1500);  // buffers 0-3 back to back
  std::vector<std::vector<float>> separate;
  for (size_t k = 4; k < sizes.size(); ++k) separate.emplace_back(sizes[k]);
  std::vector<GradientBuffer> buffers;
  size_t offset = 0;
  for (size_t k = 0; k < sizes.size(); ++k) {
    float* data = k < 4 ? arena.data() + offset : separate[k - 4].data();
    if (k < 4) offset += sizes[k];
    buffers.push_back({data, sizes[k], "grad." + std::to_string(k)});
  }
  GradientReducer reducer(comm, buffers, 4096);
  EXPECT(reducer.bucket_count() >= 4, "only %zu buckets", reducer.bucket_count());

  auto fill = [&](uint64_t stream) {
    for (size_t k = 0; k < sizes.size(); ++k)
      for (size_t i = 0; i < sizes[k]; ++i) buffers[k].data[i] = input<float>(comm.rank(), stream + k, i);
  };
  auto snapshot = [&] {
    std::vector<float> all;
    for (const GradientBuffer& b : buffers) all.insert(all.end(), b.data, b.data + b.n);
    return all;
  };

  for (uint64_t step = 0; step < 3; ++step) {  // the reducer is reused step after step
    const uint64_t stream = 100 + 10 * step;
    fill(stream);
    std::vector<size_t> order(sizes.size());
    for (size_t k = 0; k < order.size(); ++k) order[k] = k;
    if (comm.rank() % 2 == 1) std::reverse(order.begin(), order.end());
    if (comm.rank() >= 2) std::rotate(order.begin(), order.begin() + 3, order.end());
    for (size_t k = 0; k + 2 < order.size(); ++k) {  // the last two are left to finish()
      reducer.start(order[k]);
      std::this_thread::sleep_for(std::chrono::microseconds(200));  // "backward" between gradients
    }
    reducer.finish();
    const std::vector<float> overlapped = snapshot();

    fill(stream);
    reducer.reduce_all();
    const std::vector<float> plain = snapshot();
    EXPECT(std::memcmp(overlapped.data(), plain.data(), plain.size() * sizeof(float)) == 0,
           "step %d: overlapped starts and reduce_all differ", static_cast<int>(step));

    // Expected: each bucket is one ring sum over its buffers laid end to end.
    size_t at = 0;
    for (size_t bucket = 0; bucket < reducer.bucket_count(); ++bucket) {
      size_t first = sizes.size(), last = 0, elements = 0;
      for (size_t k = 0; k < sizes.size(); ++k)
        if (reducer.bucket_of(k) == bucket) first = std::min(first, k), last = k + 1, elements += sizes[k];
      size_t j = 0;
      for (size_t k = first; k < last; ++k) {
        for (size_t i = 0; i < sizes[k]; ++i, ++j) {
          // ring_sum's element index is the position in the bucket; the inputs are per buffer.
          const size_t base = elements / static_cast<size_t>(comm.size()), extra = elements % static_cast<size_t>(comm.size());
          int b = 0;
          while (b + 1 < comm.size() && j >= static_cast<size_t>(b + 1) * base + std::min<size_t>(static_cast<size_t>(b + 1), extra)) ++b;
          float acc = input<float>(b, stream + k, i);
          for (int r = 1; r < comm.size(); ++r) acc = acc + input<float>((b + r) % comm.size(), stream + k, i);
          if (std::memcmp(&acc, &plain[at + j], sizeof(float)) != 0) {
            EXPECT(false, "reducer step %d buffer %zu element %zu: %.9g, expected %.9g", static_cast<int>(step), k, i,
                   static_cast<double>(plain[at + j]), static_cast<double>(acc));
            k = last;
            break;
          }
        }
      }
      at += elements;
    }
    hash_bytes(plain.data(), plain.size() * sizeof(float));
  }
}

int run_all(Communicator& comm, int expected_size) {
  EXPECT(std::string(comm.backend()) == "mpi", "backend %s", comm.backend());
  EXPECT(comm.size() == expected_size, "size %d, expected %d", comm.size(), expected_size);
  for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{7}, size_t{1000}, size_t{100003}}) {
    check_allreduce<float>(comm, n, 1 + n);
    check_allreduce<double>(comm, n, 2 + n);
  }
  check_int64(comm);
  check_async(comm);
  check_broadcast_allgather_barrier(comm);
  check_reducer(comm);

  // Every rank holds the same bits: compare the hashes of everything computed.
  const std::vector<int64_t> hashes = comm.allgather(static_cast<int64_t>(g_hash));
  bool identical = true;
  for (size_t r = 1; r < hashes.size(); ++r) identical = identical && hashes[r] == hashes[0];
  for (size_t r = 1; r < hashes.size(); ++r)
    EXPECT(hashes[r] == hashes[0], "rank %zu's results differ from rank 0's (hash %" PRIx64 " vs %" PRIx64 ")", r,
           static_cast<uint64_t>(hashes[r]), static_cast<uint64_t>(hashes[0]));
  // Every rank's verdict, so that rank 0 reports the job's.
  const std::vector<int64_t> failures = comm.allgather(g_failures);
  int64_t total = 0;
  for (int64_t f : failures) total += f;
  if (comm.rank() == 0)
    std::printf("mpi_check: %d ranks, %s (%" PRId64 " failures), results identical on every rank: %s\n", comm.size(),
                total == 0 ? "all checks passed" : "FAILED", total, identical ? "yes" : "no");
  return total == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "all";
  const int expected_size = argc > 2 ? std::atoi(argv[2]) : 2;
  try {
    std::unique_ptr<Communicator> comm = cepe::train::make_communicator();
    g_rank = comm->rank();
    const bool last = comm->rank() == comm->size() - 1;
    if (mode == "all") return run_all(*comm, expected_size);
    if (mode == "fail") {
      std::vector<float> grad(1000, 1.0f);
      if (last) throw cepe::Error("rank " + std::to_string(comm->rank()) + ": simulated failure while loading data");
      comm->allreduce_sum(grad.data(), grad.size());  // waits for the failed rank: mpirun must end it
      std::fprintf(stderr, "rank %d: the allreduce completed without the failed rank\n", comm->rank());
      return 2;
    }
    if (mode == "hang") {
      if (last) std::this_thread::sleep_for(std::chrono::seconds(30));
      comm->barrier();
      std::fprintf(stderr, "rank %d: barrier passed\n", comm->rank());
      return 2;
    }
    throw cepe::Error("unknown mode '" + mode + "' (all, fail, hang)");
  } catch (const std::exception& e) {
    // The communicator was destroyed while this exception unwound: no MPI_Finalize at exit, so mpirun ends the
    // other ranks instead of this one waiting for them in MPI_Finalize forever.
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
