// C API of the dit-export GEMM kernels: usable without TensorRT, from the plugins, from C++ and
// from Python (exporter/gpu_kernels.py, through ctypes).
//
// Every GEMM computes  y [M, N] = act(rot(x)) W^T + bias  with
//   x      [M, K] float32 or float16 (io_type), row-major; y the same type
//   rot    x H along K, H block-diagonal with the rotation_block x rotation_block float32 block
//          `hadamard` (rotation_block 0: none)
//   act    the activation quantizer of the contract: quantize then dequantize, with one scale per
//          row, or per act_group_size channels of a row (static: row timestep_bucket[row /
//          rows_per_sample] of the scale table, and of the zero-point table for UINT4; dynamic:
//          max |x| / qmax)
//   W^T    [K, N] decoded from the weights below.
// Scalar-code weights (DitIntGemm, DitFp4Gemm):
//   codes  int8 [K, N / 2] (4-bit: two per byte, element 2i in the low nibble) or [K, N] (INT8)
//   scale  float32 [ceil(K / group_size), N];  W^T[k, n] = value(code[k, n]) * scale[k / group_size, n]
// Codebook weights (DitVqGemm):
//   codebook     float16 [codewords, dim]
//   assignments  uint8 little-endian bit stream of index_bits-bit indices, sub-vector (n, s) at
//                position n S + s, S = ceil(K / dim);  W[n, s dim + j] = codebook[index(n, s), j]
//
// Functions return 0 on success and a non-zero code otherwise; ditLastError() says why (per
// thread). Supported GPUs: sm_80, sm_86, sm_89, sm_90 (built as sm_90a); others are refused.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C"
{
#endif

typedef enum
{
    DIT_FLOAT32 = 0,
    DIT_FLOAT16 = 1
} DitFloatType;

// In the order of the contract's act_mode and act_format choices.
typedef enum
{
    DIT_ACT_NONE = 0,
    DIT_ACT_STATIC = 1,
    DIT_ACT_DYNAMIC = 2
} DitActMode;

typedef enum
{
    DIT_ACT_FORMAT_NONE = 0,
    DIT_ACT_FORMAT_INT8 = 1,
    DIT_ACT_FORMAT_FP8E4M3 = 2,
    DIT_ACT_FORMAT_FP4E2M1 = 3,
    DIT_ACT_FORMAT_INT4 = 4,  // codes in [-8, 7], one per byte
    DIT_ACT_FORMAT_UINT4 = 5  // static only: clamp(round(x / s) + z, 0, 15) - z, in [-15, 15], one per byte
} DitActFormat;

typedef enum
{
    DIT_WEIGHT_INT4 = 0,
    DIT_WEIGHT_INT8 = 1,
    DIT_WEIGHT_FP4E2M1 = 2,
    DIT_WEIGHT_FP4E3M0 = 3,
    DIT_WEIGHT_FP4E1M2 = 4
} DitWeightFormat;

typedef struct
{
    int64_t m;
    int32_t k;
    int32_t n;
    int32_t io_type;  // DitFloatType
    void const* x;
    void* y;
    float const* bias;  // [N] or NULL
    float const* hadamard;
    int32_t rotation_block;
    int32_t act_mode;    // DitActMode
    int32_t act_format;  // DitActFormat
    int32_t act_group_size;  // channels per scale, 0 for the whole row
    float const* act_scale_table;  // static: [buckets] or [buckets, K / act_group_size]
    int8_t const* act_zero_table;  // static UINT4: zero points, the shape of act_scale_table; else NULL
    int64_t const* timestep_bucket;  // static: [M / rows_per_sample]
    int64_t rows_per_sample;
    void* workspace;  // ditGemmWorkspaceSize bytes, 256-byte aligned
} DitGemmIO;

typedef struct
{
    int8_t const* codes;
    float const* scale;
    int32_t group_size;
    int32_t format;  // DitWeightFormat
} DitScalarWeights;

typedef struct
{
    void const* codebook;  // float16
    uint8_t const* assignments;
    int32_t codewords;
    int32_t dim;
    int32_t index_bits;
} DitVqWeights;

size_t ditGemmWorkspaceSize(DitGemmIO const* io);
int32_t ditScalarGemm(DitGemmIO const* io, DitScalarWeights const* weights, cudaStream_t stream);
int32_t ditVqGemm(DitGemmIO const* io, DitVqWeights const* weights, cudaStream_t stream);

// Quantizes (rot(x) of) io's activations as the GEMMs do: 8-bit codes [M, K] (INT8, INT4 or
// UINT4 minus its zero point as int8, or FP8 E4M3 bytes; FP4 E2M1 values as their exact E4M3 bytes) and float32 scales [M, groups].
int32_t ditQuantizeActivations(DitGemmIO const* io, uint8_t* codes, float* scales, cudaStream_t stream);

// 0 when the current device is supported, else non-zero with ditLastError() saying why.
int32_t ditCheckDevice(void);
char const* ditLastError(void);

#ifdef __cplusplus
}
#endif
