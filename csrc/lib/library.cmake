# The embeddable C++ library: actspace::kernels (static, CPU kernels of every family with
# their per-ISA copies and run-time dispatch, the API of csrc/include/actspace/*.hpp).
# No Python, no libtorch. Included by CMakeLists.txt after the ISA object libraries exist.
#
#   cmake -S . -B b -DACTSPACE_PYTHON=OFF && cmake --build b && cmake --install b --prefix P
#   # then, in a consumer:  find_package(actspace CONFIG REQUIRED)   (CMAKE_PREFIX_PATH=P)
#   #                       target_link_libraries(app PRIVATE actspace::kernels)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

configure_file(${CMAKE_CURRENT_SOURCE_DIR}/csrc/include/actspace/version.hpp.in
               ${GENERATED_INCLUDE}/actspace/version.hpp @ONLY)

# The driver's tile GEMM, one copy per ISA like the kernels (same flags, same namespaces).
actspace_per_isa_objects(actspace_gemm "${CMAKE_CURRENT_SOURCE_DIR}/csrc/lib/tile_gemm.cpp"
                         GEMM_OBJECTS)

add_library(actspace_kernels STATIC ${CMAKE_CURRENT_SOURCE_DIR}/csrc/lib/api.cpp ${ISA_OBJECTS}
            ${GEMM_OBJECTS})
add_library(actspace::kernels ALIAS actspace_kernels)
set_target_properties(actspace_kernels PROPERTIES EXPORT_NAME kernels)
target_include_directories(actspace_kernels
  PUBLIC $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/csrc/include>
         $<BUILD_INTERFACE:${GENERATED_INCLUDE}>
         $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>
  PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/csrc)
target_compile_definitions(actspace_kernels PRIVATE ${ISA_DEFS})
target_compile_options(actspace_kernels PRIVATE -O3 -fno-math-errno)
target_compile_features(actspace_kernels PUBLIC cxx_std_17)
if(OpenMP_CXX_FOUND)
  # PUBLIC: the kernels' OpenMP runtime calls must be resolved when the consumer links.
  target_link_libraries(actspace_kernels PUBLIC OpenMP::OpenMP_CXX)
endif()

install(TARGETS actspace_kernels EXPORT actspaceTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/csrc/include/actspace
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.hpp")
install(FILES ${GENERATED_INCLUDE}/actspace/version.hpp
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/actspace)
set(ACTSPACE_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/actspace)
install(EXPORT actspaceTargets NAMESPACE actspace:: DESTINATION ${ACTSPACE_CMAKE_DIR})
set(ACTSPACE_WITH_OPENMP ${OpenMP_CXX_FOUND})
configure_package_config_file(${CMAKE_CURRENT_SOURCE_DIR}/csrc/lib/actspaceConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/actspaceConfig.cmake INSTALL_DESTINATION ${ACTSPACE_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/actspaceConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/actspaceConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/actspaceConfigVersion.cmake
        DESTINATION ${ACTSPACE_CMAKE_DIR})
