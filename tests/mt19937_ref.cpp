// Independent reference for challenges/splits.py: MICO's splits with C++ std::mt19937.
// usage: mt19937_ref N LEN_TRAINING LEN_CHALLENGE SEED_CHALLENGE SEED_TRAINING SEED_MEMBERSHIP K
// prints four lines: challenge (2m), member (m), training[:K], evaluation[:K]
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

static std::vector<long> randperm(long n, uint64_t seed) {
  std::mt19937 g(static_cast<uint32_t>(seed));  // torchcsprng keeps the low 32 bits
  std::vector<long> r(n);
  for (long i = 0; i < n; i++) r[i] = i;
  for (long i = 0; i + 1 < n; i++) {
    long z = static_cast<long>(g() % static_cast<uint32_t>(n - i));
    std::swap(r[i], r[i + z]);
  }
  return r;
}

static void print(const std::vector<long>& v, size_t k) {
  for (size_t i = 0; i < k && i < v.size(); i++) printf(i ? ",%ld" : "%ld", v[i]);
  printf("\n");
}

int main(int argc, char** argv) {
  if (argc != 8) return 2;
  long n = atol(argv[1]), len_training = atol(argv[2]), m = atol(argv[3]);
  uint64_t sc = strtoull(argv[4], 0, 10), st = strtoull(argv[5], 0, 10), sm = strtoull(argv[6], 0, 10);
  size_t k = static_cast<size_t>(atol(argv[7]));
  std::vector<long> p = randperm(n, sc), challenge(p.begin(), p.begin() + 2 * m), rest(p.begin() + 2 * m, p.end());
  std::vector<long> q = randperm(n - 2 * m, st), training, evaluation;
  for (long i = 0; i < n - 2 * m; i++) (i < len_training - m ? training : evaluation).push_back(rest[q[i]]);
  std::vector<long> s = randperm(2 * m, sm), member;
  for (long i = m; i < 2 * m; i++) member.push_back(challenge[s[i]]);
  print(challenge, challenge.size());
  print(member, member.size());
  print(training, k);
  print(evaluation, k);
  return 0;
}
