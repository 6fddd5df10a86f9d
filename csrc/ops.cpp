// The Python module scob_fast._C. Importing it loads this library, which runs the
// TORCH_LIBRARY / TORCH_LIBRARY_FRAGMENT blocks of every op under csrc/<op>/.
#include <torch/extension.h>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {
pybind11::dict build_info() {
  pybind11::dict info;
#ifdef SCOB_FAST_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
#ifdef _OPENMP
  info["openmp"] = true;
  info["omp_max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
#endif
  info["torch_parallel_threads"] = at::get_num_threads();
  info["cpu_capability"] = at::get_cpu_capability();
  return info;
}
}  // namespace

TORCH_LIBRARY(scob_fast, m) {
  // Schemas live beside each op's body (csrc/<op>/*_registration.cpp, TORCH_LIBRARY_FRAGMENT):
  // one op, one place to look. This block only claims the namespace.
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "scob_fast C++ kernels (registered as torch.ops.scob_fast.*)";
  m.def("build_info", &build_info, "How this extension was built");
}
