// Calls actspace::sparse_decode and the streaming actspace::moments_update on raw pointers.
//
//   decode_stats_example INPUT OUTPUT
// INPUT (binary, little-endian): int64 n, k, m, d; float32 values [n, k]; int32 indices
// [n, k]; float32 W_dec [m, d], b_dec [d]. It decodes x_hat [n, d] = values @ W_dec[indices]
// + b_dec, then folds x_hat into running channel moments in two blocks of rows.
// OUTPUT: float32 x_hat [n, d]; float64 count, mean, m2, m3, m4, min, max [d] each;
// int64 zeros, nonfinite [d] each.
#include <actspace/actspace.hpp>

#include <cstdint>
#include <fstream>
#include <iostream>
#include <vector>

template <typename T>
static bool read_into(std::ifstream& f, std::vector<T>& v, int64_t count) {
  v.resize(static_cast<size_t>(count));
  return static_cast<bool>(f.read(reinterpret_cast<char*>(v.data()), count * sizeof(T)));
}

template <typename T>
static void write_all(std::ofstream& f, const std::vector<T>& v) {
  f.write(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: decode_stats_example INPUT OUTPUT\n";
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  int64_t hdr[4];
  std::vector<float> values, W_dec, b_dec;
  std::vector<int32_t> indices;
  if (!in.read(reinterpret_cast<char*>(hdr), sizeof(hdr)) ||
      !read_into(in, values, hdr[0] * hdr[1]) || !read_into(in, indices, hdr[0] * hdr[1]) ||
      !read_into(in, W_dec, hdr[2] * hdr[3]) || !read_into(in, b_dec, hdr[3])) {
    std::cerr << "decode_stats_example: " << argv[1] << " is truncated\n";
    return 2;
  }
  const int64_t n = hdr[0], k = hdr[1], m = hdr[2], d = hdr[3];
  std::vector<float> x_hat(static_cast<size_t>(n * d));
  std::vector<std::vector<double>> f(8, std::vector<double>(static_cast<size_t>(d)));
  std::vector<std::vector<int64_t>> i(2, std::vector<int64_t>(static_cast<size_t>(d)));
  const actspace::ChannelMoments st{f[0].data(), f[1].data(), f[2].data(), f[3].data(),
                                    f[4].data(), f[5].data(), f[6].data(), f[7].data(),
                                    i[0].data(), i[1].data()};
  try {
    actspace::sparse_decode(values.data(), indices.data(), W_dec.data(), b_dec.data(), n, k, m,
                            d, x_hat.data());
    actspace::moments_init(st, d);
    const int64_t half = n / 2;  // two blocks: the merge across calls is part of the API
    actspace::moments_update(x_hat.data(), half, d, d, st);
    actspace::moments_update(x_hat.data() + half * d, n - half, d, d, st);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 2;
  }
  std::ofstream out(argv[2], std::ios::binary);
  write_all(out, x_hat);
  for (int j = 0; j < 7; ++j) write_all(out, f[j]);  // count mean m2 m3 m4 min max
  for (const auto& v : i) write_all(out, v);         // zeros nonfinite
  return out ? 0 : 1;
}
