// Calls actspace::topk_encode on raw float pointers, with no Python and no libtorch.
//
//   topk_encode_example INPUT OUTPUT
// INPUT (binary, little-endian): int64 n, d, m, k, relu; then float32 x [n, d],
// W_enc [m, d], b_enc [m], b_dec [d]. OUTPUT: float32 values [n, k], int32 indices [n, k].
// Without arguments it encodes a small fixed problem and prints the result.
#include <actspace/actspace.hpp>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <vector>

namespace {

template <typename T>
bool read_into(std::ifstream& f, std::vector<T>& v, int64_t count) {
  v.resize(static_cast<size_t>(count));
  return static_cast<bool>(f.read(reinterpret_cast<char*>(v.data()), count * sizeof(T)));
}

int demo() {
  // 2 rows, d = 3, m = 4 latents, k = 2.
  const std::vector<float> x = {1, 0, 0, 0, 1, 2};
  const std::vector<float> W = {1, 0, 0, 0, 1, 0, 0, 0, 1, -1, 1, 1};
  std::vector<float> values(4);
  std::vector<int32_t> indices(4);
  actspace::topk_encode(x.data(), W.data(), nullptr, nullptr, 2, 3, 4, 2, values.data(),
                        indices.data());
  std::printf("actspace %s\n", ACTSPACE_VERSION_STRING);
  for (int r = 0; r < 2; ++r)
    std::printf("row %d: (%d, %g) (%d, %g)\n", r, indices[r * 2], values[r * 2],
                indices[r * 2 + 1], values[r * 2 + 1]);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 1) return demo();
  if (argc != 3) {
    std::cerr << "usage: topk_encode_example [INPUT OUTPUT]\n";
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  int64_t hdr[5];
  if (!in.read(reinterpret_cast<char*>(hdr), sizeof(hdr))) {
    std::cerr << "topk_encode_example: cannot read the header of " << argv[1] << "\n";
    return 2;
  }
  const int64_t n = hdr[0], d = hdr[1], m = hdr[2], k = hdr[3];
  std::vector<float> x, W, b_enc, b_dec;
  if (!read_into(in, x, n * d) || !read_into(in, W, m * d) || !read_into(in, b_enc, m) ||
      !read_into(in, b_dec, d)) {
    std::cerr << "topk_encode_example: " << argv[1] << " is shorter than its header says\n";
    return 2;
  }
  std::vector<float> values(static_cast<size_t>(n * k));
  std::vector<int32_t> indices(static_cast<size_t>(n * k));
  try {
    actspace::topk_encode(x.data(), W.data(), b_enc.data(), b_dec.data(), n, d, m, k,
                          values.data(), indices.data(), hdr[4] != 0);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 2;
  }
  std::ofstream out(argv[2], std::ios::binary);
  out.write(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  out.write(reinterpret_cast<const char*>(indices.data()), indices.size() * sizeof(int32_t));
  return out ? 0 : 1;
}
