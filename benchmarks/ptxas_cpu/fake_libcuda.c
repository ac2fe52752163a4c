/* A stand-in CUDA driver (libcuda.so.1) for compiling Mosaic GPU kernels on a machine
 * without a GPU (benchmarks/ptxas_cpu/README.md). The CUDA PJRT plugin's
 * MosaicGpuCompile asks the driver for the current device's compute capability, then
 * compiles (MLIR passes, LLVM NVPTX, ptxas) and only then loads the module: this
 * library answers 9.0 (sm_90a, Hopper) and refuses every module load, so the compile and
 * its dumps (MOSAIC_GPU_DUMP_PTXAS, _PTX, _SASS) run and nothing is ever launched. */
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
enum { CUDA_SUCCESS = 0, CUDA_ERROR_NOT_SUPPORTED = 801 };
enum { CC_MAJOR = 75, CC_MINOR = 76 };

CUresult cuInit(unsigned flags) { (void)flags; return CUDA_SUCCESS; }
CUresult cuDriverGetVersion(int *v) { *v = 13000; return CUDA_SUCCESS; }
CUresult cuDeviceGetCount(int *n) { *n = 1; return CUDA_SUCCESS; }
CUresult cuDeviceGet(CUdevice *d, int ordinal) { (void)ordinal; *d = 0; return CUDA_SUCCESS; }
CUresult cuCtxGetDevice(CUdevice *d) { *d = 0; return CUDA_SUCCESS; }
CUresult cuCtxGetCurrent(CUcontext *c) { *c = (CUcontext)0x1; return CUDA_SUCCESS; }

CUresult cuDeviceGetAttribute(int *v, int attribute, CUdevice d) {
  (void)d;
  if (attribute == CC_MAJOR) { *v = 9; return CUDA_SUCCESS; }
  if (attribute == CC_MINOR) { *v = 0; return CUDA_SUCCESS; }
  return CUDA_ERROR_NOT_SUPPORTED;  /* nothing else is known here */
}

CUresult cuGetErrorString(CUresult e, const char **s) {
  (void)e; *s = "stand-in CUDA driver (benchmarks/ptxas_cpu): no GPU here"; return CUDA_SUCCESS;
}
CUresult cuGetErrorName(CUresult e, const char **s) {
  (void)e; *s = "CUDA_ERROR_NOT_SUPPORTED"; return CUDA_SUCCESS;
}
CUresult cuModuleLoadData(void **m, const void *image) {
  (void)m; (void)image; return CUDA_ERROR_NOT_SUPPORTED;
}
CUresult cuModuleLoadDataEx(void **m, const void *image, unsigned n, void *o, void *v) {
  (void)m; (void)image; (void)n; (void)o; (void)v; return CUDA_ERROR_NOT_SUPPORTED;
}
