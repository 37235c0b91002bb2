// The stand-in libcuda.so.1 of fakeCudaDriver.h. Thread-safe: one mutex around its state.
#include "fakeCudaDriver.h"

#include <cuda.h>

#include <cstring>
#include <mutex>

namespace
{

FakeCudaState state{};
std::mutex mutex;
thread_local unsigned long long threadContext = ~0ull;  // ~0: follow state.context

int handles = 0;  // modules and functions are distinct fake addresses

template <typename Handle>
Handle newHandle()
{
    return reinterpret_cast<Handle>(static_cast<uintptr_t>(0x1000 + 16 * ++handles));
}

} // namespace

extern "C"
{

FakeCudaState* fakeCudaState()
{
    return &state;
}

// A thread's own current context (for the thread tests); ~0 makes it follow state.context again.
void fakeCudaSetThreadContext(unsigned long long context)
{
    threadContext = context;
}

CUresult cuInit(unsigned int)
{
    return CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult error, char const** text)
{
    *text = error == CUDA_ERROR_INVALID_IMAGE ? "CUDA_ERROR_INVALID_IMAGE" : "CUDA_ERROR_FAKE";
    return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult, char const** text)
{
    *text = "stand-in driver";
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext* context)
{
    std::lock_guard<std::mutex> lock(mutex);
    unsigned long long const id = threadContext != ~0ull ? threadContext : state.context;
    *context = reinterpret_cast<CUcontext>(static_cast<uintptr_t>(id));
    return CUDA_SUCCESS;
}

CUresult cuCtxGetId(CUcontext context, unsigned long long* id)
{
    *id = static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(context));
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice* device)
{
    *device = 0;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int* value, CUdevice_attribute attribute, CUdevice)
{
    std::lock_guard<std::mutex> lock(mutex);
    switch (attribute)
    {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *value = state.major; return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *value = state.minor; return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *value = state.sharedOptin; return CUDA_SUCCESS;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
}

CUresult cuModuleLoadData(CUmodule* module, void const* image)
{
    std::lock_guard<std::mutex> lock(mutex);
    if (std::memcmp(image, "\x7f" "ELF", 4) != 0)
    {
        return CUDA_ERROR_INVALID_IMAGE;
    }
    ++state.cubinLoads;
    *module = newHandle<CUmodule>();
    return CUDA_SUCCESS;
}

CUresult cuModuleLoadDataEx(CUmodule* module, void const* image, unsigned int, CUjit_option*, void**)
{
    std::lock_guard<std::mutex> lock(mutex);
    if (std::strstr(static_cast<char const*>(image), ".entry") == nullptr)
    {
        return CUDA_ERROR_INVALID_IMAGE;
    }
    ++state.ptxLoads;
    *module = newHandle<CUmodule>();
    return CUDA_SUCCESS;
}

CUresult cuModuleUnload(CUmodule)
{
    return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction* function, CUmodule, char const* name)
{
    std::lock_guard<std::mutex> lock(mutex);
    std::strncpy(state.symbol, name, sizeof(state.symbol) - 1);
    *function = newHandle<CUfunction>();
    return CUDA_SUCCESS;
}

CUresult cuFuncSetAttribute(CUfunction, CUfunction_attribute attribute, int value)
{
    std::lock_guard<std::mutex> lock(mutex);
    if (attribute == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)
    {
        state.sharedAttribute = value;
    }
    return CUDA_SUCCESS;
}

CUresult cuFuncGetParamInfo(CUfunction, size_t index, size_t* offset, size_t* size)
{
    std::lock_guard<std::mutex> lock(mutex);
    if (index >= static_cast<size_t>(state.paramCount))
    {
        return CUDA_ERROR_INVALID_VALUE;
    }
    size_t at = 0;
    for (size_t i = 0; i <= index; ++i)
    {
        size_t const bytes = static_cast<size_t>(state.paramSizes[i]);
        at = (at + bytes - 1) / bytes * bytes;
        if (i < index)
        {
            at += bytes;
        }
    }
    *offset = at;
    *size = static_cast<size_t>(state.paramSizes[index]);
    return CUDA_SUCCESS;
}

CUresult cuLaunchKernel(CUfunction, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
    unsigned shared, CUstream stream, void** params, void**)
{
    std::lock_guard<std::mutex> lock(mutex);
    ++state.launches;
    unsigned const grid[3] = {gx, gy, gz};
    unsigned const block[3] = {bx, by, bz};
    std::memcpy(state.grid, grid, sizeof(grid));
    std::memcpy(state.block, block, sizeof(block));
    state.sharedBytes = shared;
    state.stream = stream;
    state.launchedParams = state.paramCount;
    for (int i = 0; i < state.paramCount; ++i)
    {
        uint64_t value = 0;
        std::memcpy(&value, params[i], static_cast<size_t>(state.paramSizes[i]));
        state.paramValues[i] = value;
    }
    return CUDA_SUCCESS;
}

} // extern "C"
