#!/usr/bin/env bash
# Fetches what benchmarks/ptxas_cpu/ptxas_cpu.py needs into DIR (default .ptxas_cpu):
# the CUDA PJRT plugin of the installed jaxlib's version (for MosaicGpuCompile), nvdisasm
# (for SASS), and the stand-in CUDA driver built from fake_libcuda.c. Needs pip (PyPI),
# gcc, and a CUDA 13 ptxas (PTXAS_CUDA_ROOT, default /usr/local/cuda-13.0).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="$(mkdir -p "${1:-.ptxas_cpu}" && cd "${1:-.ptxas_cpu}" && pwd)"
py="${PYTHON:-python}"
mkdir -p "$dir/wheels"
version="$("$py" -c 'import jaxlib; print(jaxlib.__version__)')"
"$py" -m pip download -q --no-deps -d "$dir/wheels" "jax-cuda13-pjrt==$version" nvidia-cuda-nvdisasm
for w in "$dir"/wheels/*.whl; do "$py" -m zipfile -e "$w" "$dir/unpacked"; done
gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$dir/libcuda.so.1" "$here/fake_libcuda.c"
plugin="$(find "$dir/unpacked" -name xla_cuda_plugin.so | head -1)"
nvdisasm="$(find "$dir/unpacked" -name nvdisasm -type f | head -1)"
chmod +x "$nvdisasm"
# A CUDA root for MOSAIC_GPU_CUDA_ROOT: the toolkit's entries, with nvdisasm added to bin.
cuda="${PTXAS_CUDA_ROOT:-/usr/local/cuda-13.0}"
rm -rf "$dir/cuda" && mkdir -p "$dir/cuda/bin"
for e in "$cuda"/*; do [ "$(basename "$e")" = bin ] || ln -s "$e" "$dir/cuda/"; done
for e in "$cuda"/bin/*; do ln -s "$e" "$dir/cuda/bin/"; done
ln -sf "$(cd "$(dirname "$nvdisasm")" && pwd)/nvdisasm" "$dir/cuda/bin/nvdisasm"
"$dir/cuda/bin/ptxas" --version | tail -1
# The plugin runs nvdisasm (for MOSAIC_GPU_DUMP_SASS) from /usr/local/cuda/bin only.
if [ ! -e /usr/local/cuda/bin/nvdisasm ]; then
  if mkdir -p /usr/local/cuda/bin 2>/dev/null && [ -w /usr/local/cuda/bin ]; then
    ln -s "$dir/cuda/bin/nvdisasm" /usr/local/cuda/bin/nvdisasm
  else
    echo "note: link $dir/cuda/bin/nvdisasm to /usr/local/cuda/bin/nvdisasm for --sass"
  fi
fi
echo "plugin:   $plugin"
echo "nvdisasm: $nvdisasm"
echo "driver:   $dir/libcuda.so.1"
echo "cuda:     $dir/cuda"
