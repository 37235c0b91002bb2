// GEMM on 8-bit tensor cores: activations as INT8 or FP8 E4M3 codes with per-row (or per-group)
// scales, weights unpacked to the same 8-bit type in shared memory (INT4 as INT8; FP4 as INT8
// times its integer factor, or exactly as E4M3), mma.sync m16n8k32 with the fragment layouts of
// the PTX ISA, and each 32-deep step's partial sums rescaled by its activation and weight scales
// into float32 accumulators. K, the weight group and the activation group are multiples of 32.
#include "kernelCommon.cuh"

namespace dit_export
{
namespace
{

constexpr int32_t kBlockM = 64;
constexpr int32_t kBlockN = 64;
constexpr int32_t kBlockK = 32;
constexpr int32_t kThreads = 128;  // 4 warps, 2 x 2, each 32 x 32
constexpr int32_t kStride = kBlockK + 16;  // bytes per shared row: 16-byte aligned, fewer bank conflicts

struct Mma8Params
{
    uint8_t const* aCodes;  // [M, K]
    float const* aScales;   // [M, K / aGroup]
    int32_t aGroup;
    int8_t const* wCodes;   // [K, N / 2] or [K, N]
    float const* wScales;   // [ceil(K / wGroup), N]
    int32_t wGroup;
    int32_t wFormat;        // DitWeightFormat
    float wFactor;          // the weight values' multiplier into the 8-bit codes
    float const* bias;
    void* y;
    int64_t m;
    int32_t k;
    int32_t n;
};

// The 8-bit code of weight (k, n) for this kernel's element type.
template <bool kFp8>
__device__ __forceinline__ uint8_t weightByte(Mma8Params const& p, int32_t k, int32_t n)
{
    auto const* row = reinterpret_cast<uint8_t const*>(p.wCodes);
    if (p.wFormat == DIT_WEIGHT_INT8)
    {
        return row[static_cast<int64_t>(k) * p.n + n];
    }
    int64_t const i = static_cast<int64_t>(k) * p.n + n;
    if (p.wFormat == DIT_WEIGHT_INT4)
    {
        int32_t const v = int4At(row, i);
        return kFp8 ? roundToE4m3(static_cast<float>(v)) : static_cast<uint8_t>(static_cast<int8_t>(v));
    }
    auto const kind = static_cast<Fp4Kind>(p.wFormat - DIT_WEIGHT_FP4E2M1);
    uint32_t const code = nibbleAt(row, i);
    return kFp8 ? fp4AsE4m3(kind, code) : static_cast<uint8_t>(fp4AsInt8(kind, code));
}

template <bool kFp8>
__device__ __forceinline__ void mma(float (&d)[4], uint32_t const (&a)[4], uint32_t const (&b)[2])
{
    if constexpr (kFp8)
    {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
        asm volatile(
            "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
        __trap();  // the dispatcher sends FP8 work only to sm_89 and later
#endif
    }
    else
    {
        int32_t acc[4] = {0, 0, 0, 0};
        asm volatile(
            "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+r"(acc[0]), "+r"(acc[1]), "+r"(acc[2]), "+r"(acc[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
        for (int32_t i = 0; i < 4; ++i)
        {
            d[i] = static_cast<float>(acc[i]);  // exact: |sum| <= 32 * 128 * 128 < 2^24
        }
    }
}

template <bool kFp8, typename T>
__global__ void __launch_bounds__(kThreads) mma8Kernel(Mma8Params p)
{
    __shared__ __align__(16) uint8_t aTile[kBlockM * kStride];
    __shared__ __align__(16) uint8_t bTile[kBlockN * kStride];  // [n][k]: 4 consecutive k form a word

    int32_t const lane = threadIdx.x % 32;
    int32_t const warp = threadIdx.x / 32;
    int32_t const group = lane / 4;          // PTX "groupID"
    int32_t const inGroup = lane % 4;        // PTX "threadID_in_group"
    int64_t const rowBase = static_cast<int64_t>(blockIdx.y) * kBlockM;
    int32_t const colBase = blockIdx.x * kBlockN;
    int32_t const warpRow = (warp / 2) * 32;
    int32_t const warpCol = (warp % 2) * 32;

    float acc[2][4][4] = {};
    for (int32_t k0 = 0; k0 < p.k; k0 += kBlockK)
    {
        // Activation codes: 64 rows x 32 bytes, 16 bytes per thread.
        {
            int32_t const r = threadIdx.x / 2;
            int32_t const half = threadIdx.x % 2;
            int64_t const row = rowBase + r;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (row < p.m)
            {
                v = *reinterpret_cast<uint4 const*>(p.aCodes + row * p.k + k0 + half * 16);
            }
            *reinterpret_cast<uint4*>(aTile + r * kStride + half * 16) = v;
        }
        // Weight codes, transposed to [n][k].
        for (int32_t i = threadIdx.x; i < kBlockK * kBlockN; i += kThreads)
        {
            int32_t const kk = i / kBlockN;
            int32_t const nn = i % kBlockN;
            int32_t const col = colBase + nn;
            bTile[nn * kStride + kk] = col < p.n ? weightByte<kFp8>(p, k0 + kk, col) : 0;
        }
        __syncthreads();

        // This step's scales: activation per row, weight per column.
        int32_t const aGroupIndex = k0 / p.aGroup;
        int32_t const aGroups = p.k / p.aGroup;
        int32_t const wGroupIndex = k0 / p.wGroup;
        uint32_t a[2][4];
        float aScale[2][2];
        for (int32_t mi = 0; mi < 2; ++mi)
        {
            int32_t const r0 = warpRow + mi * 16 + group;
            uint8_t const* top = aTile + r0 * kStride + inGroup * 4;
            uint8_t const* bottom = aTile + (r0 + 8) * kStride + inGroup * 4;
            a[mi][0] = *reinterpret_cast<uint32_t const*>(top);
            a[mi][1] = *reinterpret_cast<uint32_t const*>(bottom);
            a[mi][2] = *reinterpret_cast<uint32_t const*>(top + 16);
            a[mi][3] = *reinterpret_cast<uint32_t const*>(bottom + 16);
            for (int32_t h = 0; h < 2; ++h)
            {
                int64_t const row = rowBase + r0 + 8 * h;
                aScale[mi][h] = row < p.m ? p.aScales[row * aGroups + aGroupIndex] : 0.0f;
            }
        }
        for (int32_t ni = 0; ni < 4; ++ni)
        {
            int32_t const c0 = warpCol + ni * 8;
            uint8_t const* column = bTile + (c0 + group) * kStride + inGroup * 4;
            uint32_t const b[2] = {*reinterpret_cast<uint32_t const*>(column),
                *reinterpret_cast<uint32_t const*>(column + 16)};
            float wScale[2];
            for (int32_t j = 0; j < 2; ++j)
            {
                int32_t const col = colBase + c0 + inGroup * 2 + j;
                wScale[j] = col < p.n ? p.wScales[static_cast<int64_t>(wGroupIndex) * p.n + col] / p.wFactor : 0.0f;
            }
            for (int32_t mi = 0; mi < 2; ++mi)
            {
                float step[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                mma<kFp8>(step, a[mi], b);
                for (int32_t c = 0; c < 4; ++c)
                {
                    acc[mi][ni][c] += step[c] * aScale[mi][c / 2] * wScale[c % 2];
                }
            }
        }
        __syncthreads();
    }

    T* y = static_cast<T*>(p.y);
    for (int32_t mi = 0; mi < 2; ++mi)
    {
        for (int32_t ni = 0; ni < 4; ++ni)
        {
            for (int32_t c = 0; c < 4; ++c)
            {
                int64_t const row = rowBase + warpRow + mi * 16 + group + 8 * (c / 2);
                int32_t const col = colBase + warpCol + ni * 8 + inGroup * 2 + c % 2;
                if (row < p.m && col < p.n)
                {
                    float const v = acc[mi][ni][c] + (p.bias ? p.bias[col] : 0.0f);
                    y[row * p.n + col] = fromFloat<T>(v);
                }
            }
        }
    }
}

} // namespace

int32_t launchMma8(DitGemmIO const& io, DitScalarWeights const& w, uint8_t const* codes, float const* scales, bool fp8,
    cudaStream_t stream)
{
    Mma8Params p{};
    p.aCodes = codes;
    p.aScales = scales;
    p.aGroup = activationGroup(io);
    p.wCodes = w.codes;
    p.wScales = w.scale;
    p.wGroup = w.group_size;
    p.wFormat = w.format;
    p.wFactor = 1.0f;
    if (!fp8 && w.format >= DIT_WEIGHT_FP4E2M1)
    {
        p.wFactor = fp4IntegerFactor(static_cast<Fp4Kind>(w.format - DIT_WEIGHT_FP4E2M1));
    }
    p.bias = io.bias;
    p.y = io.y;
    p.m = io.m;
    p.k = io.k;
    p.n = io.n;
    dim3 const grid((io.n + kBlockN - 1) / kBlockN, static_cast<unsigned>((io.m + kBlockM - 1) / kBlockM));
    bool const half = io.io_type == DIT_FLOAT16;
    if (fp8)
    {
        half ? mma8Kernel<true, __half><<<grid, kThreads, 0, stream>>>(p)
             : mma8Kernel<true, float><<<grid, kThreads, 0, stream>>>(p);
    }
    else
    {
        half ? mma8Kernel<false, __half><<<grid, kThreads, 0, stream>>>(p)
             : mma8Kernel<false, float><<<grid, kThreads, 0, stream>>>(p);
    }
    return cudaGetLastError() == cudaSuccess ? 0 : 1;
}

} // namespace dit_export
