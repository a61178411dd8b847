// actspace C++ API: every kernel family (csrc/families.txt) on raw CPU pointers.
#pragma once
#include "actspace/sparse_decode.hpp"
#include "actspace/stats.hpp"
#include "actspace/topk_encode.hpp"
#include "actspace/version.hpp"  // generated at configure time
