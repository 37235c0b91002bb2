// Pieces shared by the dit-export kernels: the per-thread error message, float I/O of the two
// activation types, and the workspace layout.
#pragma once

#include "ditKernels.h"
#include "quantMath.cuh"

#include <cuda_fp16.h>
#include <string>

namespace dit_export
{

void setLastError(std::string message);

template <typename T>
__device__ __forceinline__ float toFloat(T v);
template <>
__device__ __forceinline__ float toFloat<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ float toFloat<__half>(__half v)
{
    return __half2float(v);
}

template <typename T>
__device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}

constexpr size_t kAlign = 256;

inline size_t alignUp(size_t bytes)
{
    return (bytes + kAlign - 1) / kAlign * kAlign;
}

// Channels per activation scale (the whole row when the contract says 0).
inline int32_t activationGroup(DitGemmIO const& io)
{
    return io.act_mode != DIT_ACT_NONE && io.act_group_size > 0 ? io.act_group_size : io.k;
}

// Workspace: [rotated x, float32 M x K] [activation codes, M x K bytes] [scales, float32 M x groups]
struct Workspace
{
    float* rotated{nullptr};
    uint8_t* codes{nullptr};
    float* scales{nullptr};
    size_t bytes{0};
};

inline Workspace workspaceLayout(DitGemmIO const& io)
{
    Workspace w;
    size_t offset = 0;
    auto* base = static_cast<char*>(io.workspace);
    size_t const elements = static_cast<size_t>(io.m) * static_cast<size_t>(io.k);
    if (io.rotation_block > 0)
    {
        w.rotated = reinterpret_cast<float*>(base + offset);
        offset += alignUp(elements * sizeof(float));
    }
    if (io.act_mode != DIT_ACT_NONE)
    {
        w.codes = reinterpret_cast<uint8_t*>(base + offset);
        offset += alignUp(elements);
        w.scales = reinterpret_cast<float*>(base + offset);
        offset += alignUp(static_cast<size_t>(io.m) * static_cast<size_t>(io.k / activationGroup(io)) * sizeof(float));
    }
    w.bytes = offset;
    return w;
}

// The activations' value source for the GEMMs: rotated float32, or x itself.
struct ActivationSource
{
    void const* data;
    bool isFloat32;
};

int32_t launchRotation(DitGemmIO const& io, float* rotated, cudaStream_t stream);
int32_t launchQuantization(DitGemmIO const& io, ActivationSource source, uint8_t* codes, float* scales,
    cudaStream_t stream);

} // namespace dit_export
