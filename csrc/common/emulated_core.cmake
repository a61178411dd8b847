# The emulated CUDA core (included by CMakeLists.txt when ACTSPACE_CUDA_EMULATE=ON): the
# families' CUDA sources and bindings compiled by the host C++ compiler against
# csrc/common/cuda_emulate.h, as the module _core_cuda_emulated. Needs the CUDA headers
# (cuda_bf16.h, cuda_fp16.h, vector_types.h), not a GPU, nvcc or libcudart.
find_package(CUDAToolkit QUIET)
find_path(ACTSPACE_CUDA_INCLUDE cuda_bf16.h
          HINTS ${CUDAToolkit_INCLUDE_DIRS} $ENV{CUDA_HOME}/include /usr/local/cuda/include)
if(NOT ACTSPACE_CUDA_INCLUDE)
  message(FATAL_ERROR "ACTSPACE_CUDA_EMULATE=ON needs the CUDA headers (cuda_bf16.h)")
endif()

set(EMU_SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/csrc/bindings.cpp
                ${CMAKE_CURRENT_SOURCE_DIR}/csrc/common/cuda_emulate.cpp
                ${CMAKE_CURRENT_SOURCE_DIR}/csrc/common/emulate_selftest.cpp)
foreach(f ${FAMILIES})
  list(APPEND EMU_SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/csrc/${f}/bind.cpp)
  set(cu ${CMAKE_CURRENT_SOURCE_DIR}/csrc/${f}/cuda.cu)
  set_source_files_properties(${cu} PROPERTIES LANGUAGE CXX)  # CMake passes -x c++
  list(APPEND EMU_SOURCES ${cu})
endforeach()

# NO_EXTRAS: no LTO (a slow link) and no stripping (sanitizer reports keep their symbols)
pybind11_add_module(_core_cuda_emulated MODULE NO_EXTRAS ${EMU_SOURCES})
set_target_properties(_core_cuda_emulated PROPERTIES CXX_STANDARD 20)  # std::atomic_ref
target_include_directories(_core_cuda_emulated PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/csrc
                           ${GENERATED_INCLUDE} ${ACTSPACE_CUDA_INCLUDE})
target_compile_definitions(_core_cuda_emulated PRIVATE ACTSPACE_WITH_CUDA=1
                           ACTSPACE_CUDA_EMULATE=1 ACTSPACE_MODULE_NAME=_core_cuda_emulated
                           ACTSPACE_VERSION="${ACTSPACE_VERSION}"
                           ACTSPACE_CUDA_ARCHS_STR="emulated")
find_package(Threads REQUIRED)
target_link_libraries(_core_cuda_emulated PRIVATE Threads::Threads)
# -O1 -g1 (line tables): precise sanitizer reports with file:line, a short compile
target_compile_options(_core_cuda_emulated PRIVATE -O1 -g1 -fno-omit-frame-pointer)
if(ACTSPACE_SANITIZE STREQUAL "address")
  set(SAN_FLAGS -fsanitize=address,undefined,alignment -fno-sanitize-recover=all)
elseif(ACTSPACE_SANITIZE STREQUAL "thread")
  set(SAN_FLAGS -fsanitize=thread)
elseif(NOT ACTSPACE_SANITIZE STREQUAL "")
  message(FATAL_ERROR "ACTSPACE_SANITIZE must be '', address or thread, got ${ACTSPACE_SANITIZE}")
endif()
if(SAN_FLAGS)
  target_compile_options(_core_cuda_emulated PRIVATE ${SAN_FLAGS})
  target_link_options(_core_cuda_emulated PRIVATE ${SAN_FLAGS})
endif()
install(TARGETS _core_cuda_emulated LIBRARY DESTINATION actspace)
