// Hadamard rotation and activation quantization (static per-timestep tables or dynamic, per row or
// group of a row), writing the 8-bit codes and float32 scales the GEMMs read.
#include "kernelCommon.cuh"

namespace dit_export
{
namespace
{

template <typename T>
__global__ void rotationKernel(T const* x, float const* h, float* out, int64_t m, int32_t k, int32_t block)
{
    int64_t const i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= m * k)
    {
        return;
    }
    int64_t const row = i / k;
    int32_t const col = static_cast<int32_t>(i % k);
    int32_t const start = col / block * block;
    int32_t const j = col - start;
    T const* in = x + row * k + start;
    float sum = 0.0f;
    for (int32_t t = 0; t < block; ++t)
    {
        sum += toFloat(in[t]) * h[t * block + j];
    }
    out[i] = sum;
}

__device__ __forceinline__ float qmaxOf(int32_t format)
{
    switch (format)
    {
    case DIT_ACT_FORMAT_INT8: return 127.0f;
    case DIT_ACT_FORMAT_INT4: return 7.0f;
    case DIT_ACT_FORMAT_FP8E4M3: return 448.0f;
    default: return 6.0f;
    }
}

// y = x / scale; UINT4 codes carry their zero point z and are stored as code - z, so that every
// integer format reaches the GEMMs as signed values times the scale.
__device__ __forceinline__ uint8_t encode(float y, int32_t format, float zero)
{
    if (format == DIT_ACT_FORMAT_UINT4)
    {
        return static_cast<uint8_t>(static_cast<int8_t>(roundToUint4(y, zero) - zero));
    }
    if (format == DIT_ACT_FORMAT_INT8)
    {
        return static_cast<uint8_t>(roundToInt8(y));
    }
    if (format == DIT_ACT_FORMAT_INT4)
    {
        return static_cast<uint8_t>(roundToInt4(y));
    }
    if (format == DIT_ACT_FORMAT_FP8E4M3)
    {
        return roundToE4m3(y);
    }
    return roundToE4m3(roundToE2m1(y));  // exact: every E2M1 value is an E4M3 value
}

constexpr int32_t kQuantThreads = 256;

// One block per row; groups of the row one after another.
template <typename T>
__global__ void quantizeKernel(T const* x, int64_t m, int32_t k, int32_t group, int32_t mode, int32_t format,
    float const* table, int8_t const* zeros, int64_t const* bucket, int64_t rowsPerSample, uint8_t* codes,
    float* scales)
{
    __shared__ float partial[kQuantThreads / 32];
    int64_t const row = blockIdx.x;
    T const* in = x + row * k;
    int32_t const groups = k / group;
    for (int32_t g = 0; g < groups; ++g)
    {
        float scale;
        float zero = 0.0f;
        if (mode == DIT_ACT_STATIC)
        {
            int64_t const entry = bucket[row / rowsPerSample] * groups + g;
            scale = table[entry];
            zero = zeros != nullptr ? static_cast<float>(zeros[entry]) : 0.0f;
        }
        else
        {
            float amax = 0.0f;
            for (int32_t c = threadIdx.x; c < group; c += blockDim.x)
            {
                amax = fmaxf(amax, fabsf(toFloat(in[g * group + c])));
            }
            for (int32_t offset = 16; offset > 0; offset /= 2)
            {
                amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
            }
            if (threadIdx.x % 32 == 0)
            {
                partial[threadIdx.x / 32] = amax;
            }
            __syncthreads();
            amax = partial[0];
            for (int32_t w = 1; w < kQuantThreads / 32; ++w)
            {
                amax = fmaxf(amax, partial[w]);
            }
            __syncthreads();
            scale = fmaxf(amax / qmaxOf(format), kTinyScale);
        }
        for (int32_t c = threadIdx.x; c < group; c += blockDim.x)
        {
            codes[row * k + g * group + c] = encode(toFloat(in[g * group + c]) / scale, format, zero);
        }
        if (threadIdx.x == 0)
        {
            scales[row * groups + g] = scale;
        }
    }
}

} // namespace

int32_t launchRotation(DitGemmIO const& io, float* rotated, cudaStream_t stream)
{
    int64_t const total = io.m * io.k;
    int32_t const threads = 256;
    auto const blocks = static_cast<unsigned>((total + threads - 1) / threads);
    if (io.io_type == DIT_FLOAT16)
    {
        rotationKernel<<<blocks, threads, 0, stream>>>(
            static_cast<__half const*>(io.x), io.hadamard, rotated, io.m, io.k, io.rotation_block);
    }
    else
    {
        rotationKernel<<<blocks, threads, 0, stream>>>(
            static_cast<float const*>(io.x), io.hadamard, rotated, io.m, io.k, io.rotation_block);
    }
    return cudaGetLastError() == cudaSuccess ? 0 : 1;
}

int32_t launchQuantization(DitGemmIO const& io, ActivationSource source, uint8_t* codes, float* scales,
    cudaStream_t stream)
{
    int32_t const group = activationGroup(io);
    auto const blocks = static_cast<unsigned>(io.m);
    if (source.isFloat32)
    {
        quantizeKernel<<<blocks, kQuantThreads, 0, stream>>>(static_cast<float const*>(source.data), io.m, io.k,
            group, io.act_mode, io.act_format, io.act_scale_table, io.act_zero_table, io.timestep_bucket,
            io.rows_per_sample, codes, scales);
    }
    else
    {
        quantizeKernel<<<blocks, kQuantThreads, 0, stream>>>(static_cast<__half const*>(source.data), io.m, io.k,
            group, io.act_mode, io.act_format, io.act_scale_table, io.act_zero_table, io.timestep_bucket,
            io.rows_per_sample, codes, scales);
    }
    return cudaGetLastError() == cudaSuccess ? 0 : 1;
}

} // namespace dit_export
