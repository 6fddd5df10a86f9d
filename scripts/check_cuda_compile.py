"""Compile-checks every CUDA source under csrc/ with nvcc for the given archs (nothing runs).

Used by CI: there is no GPU here, so a compile error is the only CUDA failure we can catch.
Exit status is non-zero when any source fails to compile, or when nvcc is missing and
--require-nvcc is given.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nvcc_command(source: str, output: str, archs: list[str]) -> list[str]:
    from torch.utils.cpp_extension import include_paths
    cmd = ["nvcc", "-c", source, "-o", output, "-std=c++20", "-O1", "-Xcompiler", "-fPIC",
           "--expt-relaxed-constexpr", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", "-DSCOB_FAST_WITH_CUDA",
           "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
           "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
           "-I", os.path.join(ROOT, "csrc"), "-I", sysconfig.get_paths()["include"]]
    for path in include_paths():
        cmd += ["-I", path]
    for arch in archs:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return cmd


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", action="append", default=None, help="SM arch number, repeatable (default 80 and 90)")
    parser.add_argument("--require-nvcc", action="store_true", help="fail when nvcc is not on PATH")
    parser.add_argument("sources", nargs="*", help="default: csrc/**/*.cu and csrc/**/*_cuda.cpp")
    args = parser.parse_args()
    archs = args.arch or ["80", "90"]
    if shutil.which("nvcc") is None:
        print("check_cuda_compile: nvcc not found on PATH")
        return 1 if args.require_nvcc else 0
    sources = args.sources or sorted(glob.glob(os.path.join(ROOT, "csrc/**/*.cu"), recursive=True)
                                     + glob.glob(os.path.join(ROOT, "csrc/**/*_cuda.cpp"), recursive=True))
    if not sources:
        print("check_cuda_compile: no CUDA sources found")
        return 0
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in sources:
            start = time.time()
            out = os.path.join(tmp, os.path.basename(source) + ".o")
            result = subprocess.run(nvcc_command(source, out, archs), capture_output=True, text=True)
            status = "ok" if result.returncode == 0 else "FAILED"
            print(f"{status:6s} {os.path.relpath(source, ROOT)} sm_{','.join(archs)} ({time.time() - start:.0f} s)")
            if result.returncode != 0:
                failed.append(source)
                print(result.stdout[-4000:], result.stderr[-8000:], sep="\n")
    if failed:
        print(f"check_cuda_compile: {len(failed)} source(s) failed to compile")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
