// C API of the Triton GEMM kernels (exporter/kernels/), compiled ahead of time and embedded in the
// library: launched with the CUDA driver API, with neither Python nor Triton at run time.
//
//   python -m exporter.kernels.aot    -> <variant>.sm<arch>.cubin, <variant>.ptx, kernels.json
//   python -m exporter.kernels.embed  -> one C++ file: the images and their table (tritonKernelTable.h)
//   this launcher                      -> picks the image for the device, loads it once per context,
//                                         checks the operands and launches
//
// Image for a device of compute capability X.Y: the cubin of the highest arch that runs there
// (sm_80 for 8.0, 8.6 and 8.7; sm_89 for 8.9; sm_90a for exactly 9.0: Triton builds targets from
// 90 on as arch-specific "a" code), else the variant's PTX if it targets X.Y or lower (JIT-compiled
// by the driver, once per context: newer GPUs). Modules are loaded lazily, once per (CUDA context,
// variant), into a mutex-protected cache; the context is the calling thread's current one
// (cuCtxGetCurrent: with the runtime API, the device's primary context once cudaSetDevice or any
// runtime call has run on the thread). ditTritonPreload() does the loading (and any JIT) up front.
//
// Kernel ABI of Triton 3.9's compiled kernels (what cuLaunchKernel must pass)
//   parameters = the kernel's runtime arguments in signature order (every argument not declared
//                tl.constexpr: variants.py's `signature`; its `constants` are compiled in and
//                dropped), each as its C type: pointers 8 bytes (CUdeviceptr), i32 4 bytes;
//              + global_scratch (8-byte pointer)  + profile_scratch (8-byte pointer), always last.
//   block      = 32 * num_warps threads in x (the kernel's .reqntid), grid (programs, 1, 1),
//                dynamic shared memory = metadata.shared bytes (above 48 KiB it needs
//                CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES), one CTA per program (num_ctas 1).
//   Evidence:
//   - triton/backends/nvidia/driver.py + driver.c (3.9: the generic C launcher replaced the generated
//     make_launcher): CudaLauncher drops "constexpr" entries of the signature (annotate_arguments,
//     ARG_CONSTEXPR), launchKernel appends `params[...] = global_scratch; params[...] =
//     profile_scratch` after the arguments ("+ 2 for global & profile scratch"), and _launch uses
//     blockDimX = 32 * num_warps, sharedMemBytes = shared, gridDimX = gridX * num_ctas. The two
//     scratch pointers are NULL when metadata.global_scratch_size / profile_scratch_size are 0.
//   - The AOT compiles give Triton no integer to specialise (ASTSource with explicit "i32" types and
//     only tt.divisibility=16 attributes), so no argument equal to 1 is dropped: rows_per_sample and
//     table_row stay parameters (the JIT path would specialise them when they are 1).
//   - PTX .entry of int8_gemm.w8.large: 7 x `.param .u64 .ptr .global`, 3 x `.param .u32`, then
//     2 x `.param .u64 .ptr .global` (12 = 10 arguments + 2); vq_gemm: 6 + 3 + 2; fp8_gemm: 7 + 3 + 2;
//     quantize_rows: 5 x u64 + 3 x u32 + 2 x u64. `.reqntid 256` for 8 warps, 128 for 4.
//   - cuobjdump -elf int8_gemm.w8.large.sm90.cubin (sm=90a): 12 EIATTR_KPARAM_INFO, ordinals 0..11,
//     sizes 8 x7, 4 x3, 8 x2 at offsets 0x0..0x30, 0x38, 0x3c, 0x40, 0x48, 0x50;
//     EIATTR_CBANK_PARAM_SIZE 0x58; EIATTR_REQNTID 0x100.
//   - Every variant of variants.py has global_scratch_size = profile_scratch_size = 0, num_ctas 1,
//     no PDL, no cooperative launch (tests/test_triton_launcher.py checks this, and the PTX and cubin
//     parameter lists of every image).
//   When the driver has cuFuncGetParamInfo (CUDA 12.4+), loading a kernel also checks its parameter
//   count and sizes against this ABI.
//
// Operands: device pointers, every one 16-byte aligned, and N, K multiples of 16 (the variants are
// compiled with that assumption: tt.divisibility 16). M, N, K are int32; M * K and N * K must stay
// below 2^31 (the kernels index rows in int32). M = 0 or N = 0 launches nothing and succeeds.
// The variants are built with a bias: pass zeros for a layer without one. Outputs are float16.
// Tiles: "large" (128 x 128) for M > 128, else "small" (64 x 64), as the Python wrappers pick.
//
// Every function returns DIT_TRITON_SUCCESS (0) or another status; ditTritonLastError() says why
// (per thread). Nothing throws or exits.
#pragma once

#include <stdint.h>

#include "tritonEnums.h"  // generated from exporter/contract/kernel_api.py

#ifdef __cplusplus
extern "C"
{
#endif

// The CUDA stream type of both APIs: cudaStream_t and CUstream are `struct CUstream_st*`.
typedef struct CUstream_st* DitTritonStream;

// exporter/kernels/int8_gemm.py:  y = (a @ w^T) * a_scale[m] * w_scale[n] + bias[n]
int32_t ditTritonInt8Gemm(void const* a,          // int8 [M, K] (ACT_INT8) or float16 [M, K] (ACT_FP16)
                          float const* aScale,    // float32 [M] for ACT_INT8; NULL for ACT_FP16
                          void const* w,          // weightBits 8: int8 [N, K]; 4: uint8 [N, K / 2] chunk layout
                          uint8_t const* factor,  // weightBits 4: uint8 [N, K / 32] (1..16); 8: NULL
                          float const* wScale,    // float32 [N]
                          float const* bias,      // float32 [N]
                          void* y,                // float16 [M, N]
                          int32_t m, int32_t n, int32_t k,
                          int32_t weightBits,     // 8 or 4 (4: K a multiple of the kernel's K step, 128)
                          int32_t activation,     // DitTritonActivation
                          DitTritonStream stream);

// exporter/kernels/fp8_gemm.py (sm_89 and newer):  y = (a @ w^T) * a_scale[m] * w_scale[n] + bias[n]
// With aScale NULL, a is float16 and the weights E4M3 (weightBits 8): y = (a @ w^T) * w_scale[n] + bias[n]
// on int8_gemm's FP16-activation path (the E4M3 operands of FP4 weights with FP activations).
int32_t ditTritonFp8Gemm(void const* a,          // float8_e4m3fn [M, K]; float16 [M, K] when aScale is NULL
                         float const* aScale,    // float32 [M], or NULL (float16 a)
                         void const* w,          // weightBits 8: float8_e4m3fn [N, K]; 4: FP4 uint8 [N, K / 2] chunk layout
                         uint8_t const* offset,  // weightBits 4: uint8 [N, K / 32], exponent t - t_min; 8: NULL
                         float const* wScale,    // float32 [N]
                         float const* bias,      // float32 [N]
                         void* y,                // float16 [M, N]
                         int32_t m, int32_t n, int32_t k,
                         int32_t weightBits,     // 8 (E4M3) or 4 (FP4; K a multiple of the K step, 128)
                         int32_t fp4Format,      // weightBits 4: DitTritonFp4Format of the codes; 8: ignored
                         DitTritonStream stream);

// exporter/kernels/vq_gemm.py:  y = a @ W^T + bias[n], W[n, s D + j] = codebook[indices[n, s], j]
int32_t ditTritonVqGemm(void const* a,            // float16 [M, K]
                        uint8_t const* indices,   // uint8 [N, K / D]
                        void const* codebook,     // float16 [codewords <= 256, D]
                        float const* bias,        // float32 [N]
                        void* y,                  // float16 [M, N]
                        int32_t m, int32_t n, int32_t k,
                        int32_t dim,              // D: 4 or 2
                        DitTritonStream stream);

// exporter/kernels/activation_quant.py: each row of x to 8-bit codes and one float32 scale.
// Static scales (table non-NULL): scale[row] = table[bucket[row / (M / samples)]]; dynamic (table
// and bucket NULL): max |x[row]| / qmax. INT4: code = (clamp(round(x / (scale f) + z), 0, 15) - z) f.
int32_t ditTritonQuantizeRows(void const* x,          // float16 [M, K]
                              void* codes,            // int8 or float8_e4m3fn [M, K]
                              float* scale,           // float32 [M]
                              float const* table,     // float32 [buckets], or NULL (dynamic)
                              int64_t const* bucket,  // int64 [samples]: each sample's table row, or NULL
                              uint8_t const* groups,  // INT4: uint8 [buckets, K / 32, 2], f (1..8) and z (0..15)
                                                      // of each group; other formats: NULL
                              int32_t m, int32_t k,   // K a multiple of 16 (FP4, INT4: of 32)
                              int32_t samples,        // static: M a multiple of it; dynamic: ignored
                              int32_t format,         // DitTritonQuantFormat
                              DitTritonStream stream);

// Loads (and JIT-compiles, for PTX) every variant that runs on the current context's device, so
// that no later launch pays for it; variants with no image for this device are skipped.
int32_t ditTritonPreload(void);

// The Triton version the embedded kernels were compiled with.
char const* ditTritonKernelsVersion(void);

// Why the last failing call on this thread failed ("" if none has).
char const* ditTritonLastError(void);

#ifdef __cplusplus
}
#endif
