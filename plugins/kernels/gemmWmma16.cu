// GEMM on FP16 tensor cores (WMMA 16x16x16, float32 accumulation) with both operands decoded
// to FP16 in shared memory: the path for weight-only layers, for FP8 / FP4 activations on Ampere,
// for INT8 weights with FP8 activations, and for codebook (VQ) weights, whose codebook is staged
// in shared memory when it fits. Any M, N and K.
#include "kernelCommon.cuh"

#include <mma.h>

namespace dit_export
{
namespace
{

constexpr int32_t kBlockM = 64;
constexpr int32_t kBlockN = 64;
constexpr int32_t kBlockK = 32;
constexpr int32_t kThreads = 128;  // 4 warps, 2 x 2, each 32 x 32
constexpr int32_t kAStride = kBlockK + 8;
constexpr int32_t kBStride = kBlockN + 8;
constexpr int32_t kCStride = kBlockN + 4;
constexpr int32_t kMaxSharedCodebook = 8192;  // halves: codebooks up to 16 KiB are staged (48 KiB in all)

struct ActivationOperand
{
    void const* values;  // float32 or float16 [M, K] when codes is null
    bool isFloat32;
    uint8_t const* codes;  // 8-bit codes [M, K] with scales [M, K / group]
    float const* scales;
    int32_t group;
    int32_t format;  // DitActFormat of the codes
};

struct WeightOperand
{
    // scalar codes
    int8_t const* codes;
    float const* scale;
    int32_t group;
    int32_t format;
    // codebook
    __half const* codebook;
    uint8_t const* assignments;
    int32_t codewords;
    int32_t dim;
    int32_t indexBits;
};

__device__ __forceinline__ float activationAt(ActivationOperand const& a, int64_t row, int32_t col, int32_t k)
{
    int64_t const i = row * k + col;
    if (a.codes == nullptr)
    {
        return a.isFloat32 ? static_cast<float const*>(a.values)[i] : __half2float(static_cast<__half const*>(a.values)[i]);
    }
    uint8_t const code = a.codes[i];
    bool const integer
        = a.format == DIT_ACT_FORMAT_INT8 || a.format == DIT_ACT_FORMAT_INT4 || a.format == DIT_ACT_FORMAT_UINT4;
    float const v = integer ? static_cast<float>(static_cast<int8_t>(code)) : e4m3Value(code);
    return v * a.scales[row * (k / a.group) + col / a.group];
}

template <bool kCodebook>
__device__ __forceinline__ float weightAt(WeightOperand const& w, __half const* codebook, int32_t kk, int32_t col,
    int32_t k, int32_t n)
{
    if constexpr (kCodebook)
    {
        int32_t const perRow = (k + w.dim - 1) / w.dim;
        uint32_t const index = streamIndexAt(w.assignments, static_cast<int64_t>(col) * perRow + kk / w.dim, w.indexBits);
        return __half2float(codebook[index * w.dim + kk % w.dim]);
    }
    else
    {
        int64_t const i = static_cast<int64_t>(kk) * n + col;
        auto const* bytes = reinterpret_cast<uint8_t const*>(w.codes);
        float value;
        if (w.format == DIT_WEIGHT_INT8)
        {
            value = static_cast<float>(w.codes[i]);
        }
        else if (w.format == DIT_WEIGHT_INT4)
        {
            value = static_cast<float>(int4At(bytes, i));
        }
        else
        {
            value = fp4Value(static_cast<Fp4Kind>(w.format - DIT_WEIGHT_FP4E2M1), nibbleAt(bytes, i));
        }
        return value * w.scale[static_cast<int64_t>(kk / w.group) * n + col];
    }
}

template <bool kCodebook, typename T>
__global__ void __launch_bounds__(kThreads) wmmaKernel(ActivationOperand a, WeightOperand w, float const* bias, T* y,
    int64_t m, int32_t k, int32_t n, bool stagedCodebook)
{
    using namespace nvcuda;
    __shared__ __align__(32) __half aTile[kBlockM * kAStride];
    __shared__ __align__(32) __half bTile[kBlockK * kBStride];
    __shared__ __align__(32) float cTile[kBlockM * kCStride];
    extern __shared__ __align__(16) __half sharedCodebook[];

    __half const* codebook = w.codebook;
    if (kCodebook && stagedCodebook)
    {
        for (int32_t i = threadIdx.x; i < w.codewords * w.dim; i += kThreads)
        {
            sharedCodebook[i] = w.codebook[i];
        }
        codebook = sharedCodebook;
        __syncthreads();
    }

    int32_t const warp = threadIdx.x / 32;
    int32_t const warpRow = (warp / 2) * 32;
    int32_t const warpCol = (warp % 2) * 32;
    int64_t const rowBase = static_cast<int64_t>(blockIdx.y) * kBlockM;
    int32_t const colBase = blockIdx.x * kBlockN;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
    for (auto& row : acc)
    {
        for (auto& f : row)
        {
            wmma::fill_fragment(f, 0.0f);
        }
    }
    for (int32_t k0 = 0; k0 < k; k0 += kBlockK)
    {
        for (int32_t i = threadIdx.x; i < kBlockM * kBlockK; i += kThreads)
        {
            int32_t const r = i / kBlockK;
            int32_t const c = i % kBlockK;
            int64_t const row = rowBase + r;
            float const v = row < m && k0 + c < k ? activationAt(a, row, k0 + c, k) : 0.0f;
            aTile[r * kAStride + c] = __float2half_rn(v);
        }
        for (int32_t i = threadIdx.x; i < kBlockK * kBlockN; i += kThreads)
        {
            int32_t const r = i / kBlockN;
            int32_t const c = i % kBlockN;
            bool const inside = k0 + r < k && colBase + c < n;
            float const v = inside ? weightAt<kCodebook>(w, codebook, k0 + r, colBase + c, k, n) : 0.0f;
            bTile[r * kBStride + c] = __float2half_rn(v);
        }
        __syncthreads();
        for (int32_t kk = 0; kk < kBlockK; kk += 16)
        {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb[2];
            for (int32_t i = 0; i < 2; ++i)
            {
                wmma::load_matrix_sync(fa[i], aTile + (warpRow + i * 16) * kAStride + kk, kAStride);
                wmma::load_matrix_sync(fb[i], bTile + kk * kBStride + warpCol + i * 16, kBStride);
            }
            for (int32_t i = 0; i < 2; ++i)
            {
                for (int32_t j = 0; j < 2; ++j)
                {
                    wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
                }
            }
        }
        __syncthreads();
    }
    for (int32_t i = 0; i < 2; ++i)
    {
        for (int32_t j = 0; j < 2; ++j)
        {
            wmma::store_matrix_sync(cTile + (warpRow + i * 16) * kCStride + warpCol + j * 16, acc[i][j], kCStride,
                wmma::mem_row_major);
        }
    }
    __syncthreads();
    for (int32_t i = threadIdx.x; i < kBlockM * kBlockN; i += kThreads)
    {
        int32_t const r = i / kBlockN;
        int32_t const c = i % kBlockN;
        int64_t const row = rowBase + r;
        int32_t const col = colBase + c;
        if (row < m && col < n)
        {
            y[row * n + col] = fromFloat<T>(cTile[r * kCStride + c] + (bias ? bias[col] : 0.0f));
        }
    }
}

template <bool kCodebook>
int32_t launch(DitGemmIO const& io, ActivationOperand const& a, WeightOperand const& w, cudaStream_t stream)
{
    dim3 const grid((io.n + kBlockN - 1) / kBlockN, static_cast<unsigned>((io.m + kBlockM - 1) / kBlockM));
    bool const staged = kCodebook && w.codewords * w.dim <= kMaxSharedCodebook;
    size_t const shared = staged ? static_cast<size_t>(w.codewords * w.dim) * sizeof(__half) : 0;
    if (io.io_type == DIT_FLOAT16)
    {
        wmmaKernel<kCodebook, __half><<<grid, kThreads, shared, stream>>>(
            a, w, io.bias, static_cast<__half*>(io.y), io.m, io.k, io.n, staged);
    }
    else
    {
        wmmaKernel<kCodebook, float><<<grid, kThreads, shared, stream>>>(
            a, w, io.bias, static_cast<float*>(io.y), io.m, io.k, io.n, staged);
    }
    return cudaGetLastError() == cudaSuccess ? 0 : 1;
}

ActivationOperand activationOperand(DitGemmIO const& io, ActivationSource source, uint8_t const* codes,
    float const* scales)
{
    ActivationOperand a{};
    a.values = source.data;
    a.isFloat32 = source.isFloat32;
    a.codes = codes;
    a.scales = scales;
    a.group = activationGroup(io);
    a.format = io.act_format;
    return a;
}

} // namespace

int32_t launchWmmaScalar(DitGemmIO const& io, DitScalarWeights const& weights, ActivationSource source,
    uint8_t const* codes, float const* scales, cudaStream_t stream)
{
    WeightOperand w{};
    w.codes = weights.codes;
    w.scale = weights.scale;
    w.group = weights.group_size;
    w.format = weights.format;
    return launch<false>(io, activationOperand(io, source, codes, scales), w, stream);
}

int32_t launchWmmaCodebook(DitGemmIO const& io, DitVqWeights const& weights, ActivationSource source,
    uint8_t const* codes, float const* scales, cudaStream_t stream)
{
    WeightOperand w{};
    w.codebook = static_cast<__half const*>(weights.codebook);
    w.assignments = weights.assignments;
    w.codewords = weights.codewords;
    w.dim = weights.dim;
    w.indexBits = weights.index_bits;
    return launch<true>(io, activationOperand(io, source, codes, scales), w, stream);
}

} // namespace dit_export
