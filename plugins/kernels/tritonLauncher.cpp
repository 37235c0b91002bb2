// Driver side of the Triton kernel launcher (tritonLauncher.h): the CUDA driver's entry points, the
// per-context cache of loaded kernels, the launch, and the C API. Image selection and argument
// checks are in tritonLauncherLogic.cpp.
#include "tritonLauncher.h"
#include "tritonLauncherLogic.h"

#include <cuda.h>
#include <dlfcn.h>

#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace dit_export
{
namespace triton
{
namespace
{

constexpr int kDefaultSharedLimit = 48 * 1024;  // above it a kernel has to opt in
constexpr std::size_t kJitLogBytes = 8192;

thread_local std::string lastError;

int32_t fail(int32_t status, std::string message) noexcept
{
    try
    {
        lastError = std::move(message);
    }
    catch (...)
    {
        // No memory for the message: the status still says what kind of failure it was.
    }
    return status;
}

int32_t failUnexpected(char const* what) noexcept
{
    try
    {
        lastError = std::string("unexpected error: ") + what;
    }
    catch (...)
    {
    }
    return DIT_TRITON_INTERNAL_ERROR;
}

// The driver's entry points, resolved at run time from libcuda.so.1: the library needs no libcuda
// to link (CUDA toolkits installed from wheels ship no stub) and loads on machines without a driver,
// where every call fails with DIT_TRITON_CUDA_ERROR. None of these entry points is versioned in
// cuda.h 13.0 (only cuLaunchKernel has a per-thread-default-stream twin, not used here), so the
// plain names dlsym finds are the ones the prototypes describe.
struct Driver
{
    decltype(&::cuInit) init = nullptr;
    decltype(&::cuGetErrorName) getErrorName = nullptr;
    decltype(&::cuGetErrorString) getErrorString = nullptr;
    decltype(&::cuCtxGetCurrent) ctxGetCurrent = nullptr;
    decltype(&::cuCtxGetDevice) ctxGetDevice = nullptr;
    decltype(&::cuCtxGetId) ctxGetId = nullptr;  // CUDA 12.0
    decltype(&::cuDeviceGetAttribute) deviceGetAttribute = nullptr;
    decltype(&::cuModuleLoadData) moduleLoadData = nullptr;
    decltype(&::cuModuleLoadDataEx) moduleLoadDataEx = nullptr;
    decltype(&::cuModuleUnload) moduleUnload = nullptr;
    decltype(&::cuModuleGetFunction) moduleGetFunction = nullptr;
    decltype(&::cuFuncSetAttribute) funcSetAttribute = nullptr;
    decltype(&::cuFuncGetParamInfo) funcGetParamInfo = nullptr;  // CUDA 12.4; optional
    decltype(&::cuLaunchKernel) launchKernel = nullptr;
    std::string error;  // why the driver cannot be used; empty when it can
};

template <typename Function>
void resolve(void* library, char const* name, Function& function, bool required, std::string& error)
{
    function = reinterpret_cast<Function>(dlsym(library, name));
    if (function == nullptr && required && error.empty())
    {
        error = std::string("the CUDA driver has no ") + name + ": a driver for CUDA 12.0 or newer is needed";
    }
}

std::string cudaError(Driver const& driver, CUresult result, char const* call)
{
    char const* name = nullptr;
    char const* text = nullptr;
    if (driver.getErrorName != nullptr)
    {
        driver.getErrorName(result, &name);
    }
    if (driver.getErrorString != nullptr)
    {
        driver.getErrorString(result, &text);
    }
    return std::string(call) + " failed: " + (name ? name : "CUDA error " + std::to_string(static_cast<int>(result)))
        + (text ? std::string(" (") + text + ")" : "");
}

Driver loadDriver()
{
    Driver driver;
    void* library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr)
    {
        char const* why = dlerror();
        driver.error = std::string("cannot load the CUDA driver (libcuda.so.1): ") + (why ? why : "not found");
        return driver;
    }
    std::string& error = driver.error;
    resolve(library, "cuInit", driver.init, true, error);
    resolve(library, "cuGetErrorName", driver.getErrorName, true, error);
    resolve(library, "cuGetErrorString", driver.getErrorString, true, error);
    resolve(library, "cuCtxGetCurrent", driver.ctxGetCurrent, true, error);
    resolve(library, "cuCtxGetDevice", driver.ctxGetDevice, true, error);
    resolve(library, "cuCtxGetId", driver.ctxGetId, true, error);
    resolve(library, "cuDeviceGetAttribute", driver.deviceGetAttribute, true, error);
    resolve(library, "cuModuleLoadData", driver.moduleLoadData, true, error);
    resolve(library, "cuModuleLoadDataEx", driver.moduleLoadDataEx, true, error);
    resolve(library, "cuModuleUnload", driver.moduleUnload, true, error);
    resolve(library, "cuModuleGetFunction", driver.moduleGetFunction, true, error);
    resolve(library, "cuFuncSetAttribute", driver.funcSetAttribute, true, error);
    resolve(library, "cuFuncGetParamInfo", driver.funcGetParamInfo, false, error);
    resolve(library, "cuLaunchKernel", driver.launchKernel, true, error);
    if (error.empty())
    {
        if (CUresult const result = driver.init(0))
        {
            error = cudaError(driver, result, "cuInit");
        }
    }
    return driver;
}

Driver const& driver()
{
    static Driver const instance = loadDriver();
    return instance;
}

struct LoadedKernel
{
    CUfunction function = nullptr;
    KernelImage const* image = nullptr;
    bool abiChecked = false;  // its parameters checked against the first launch's plan
};

// What one CUDA context has loaded. Modules stay loaded for the context's lifetime.
struct ContextKernels
{
    int major = 0;
    int minor = 0;
    int sharedLimit = 0;  // opt-in dynamic shared memory per block
    std::map<std::string, LoadedKernel, std::less<>> byVariant;
};

std::mutex cacheMutex;
std::map<unsigned long long, ContextKernels> cache;  // by cuCtxGetId: unique over the process

int32_t currentContext(Driver const& d, unsigned long long& id)
{
    CUcontext context = nullptr;
    if (CUresult const result = d.ctxGetCurrent(&context))
    {
        return fail(DIT_TRITON_CUDA_ERROR, cudaError(d, result, "cuCtxGetCurrent"));
    }
    if (context == nullptr)
    {
        return fail(DIT_TRITON_CUDA_ERROR,
            "no CUDA context is current on this thread: make one current first (the runtime API does on "
            "cudaSetDevice and a first runtime call; the driver API with cuCtxSetCurrent)");
    }
    if (CUresult const result = d.ctxGetId(context, &id))
    {
        return fail(DIT_TRITON_CUDA_ERROR, cudaError(d, result, "cuCtxGetId"));
    }
    return DIT_TRITON_SUCCESS;
}

// The current context's entry in the cache (caller holds cacheMutex).
int32_t contextKernels(Driver const& d, unsigned long long id, ContextKernels*& out)
{
    auto found = cache.find(id);
    if (found == cache.end())
    {
        ContextKernels state;
        CUdevice device = 0;
        CUresult result = d.ctxGetDevice(&device);
        char const* call = "cuCtxGetDevice";
        if (result == CUDA_SUCCESS)
        {
            call = "cuDeviceGetAttribute";
            result = d.deviceGetAttribute(&state.major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device);
        }
        if (result == CUDA_SUCCESS)
        {
            result = d.deviceGetAttribute(&state.minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device);
        }
        if (result == CUDA_SUCCESS)
        {
            result = d.deviceGetAttribute(
                &state.sharedLimit, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, device);
        }
        if (result != CUDA_SUCCESS)
        {
            return fail(DIT_TRITON_CUDA_ERROR, cudaError(d, result, call));
        }
        found = cache.emplace(id, std::move(state)).first;
    }
    out = &found->second;
    return DIT_TRITON_SUCCESS;
}

int32_t loadModule(Driver const& d, KernelImage const& image, CUmodule& module)
{
    if (!image.ptx)
    {
        if (CUresult const result = d.moduleLoadData(&module, image.data))
        {
            return fail(DIT_TRITON_CUDA_ERROR,
                cudaError(d, result, "cuModuleLoadData") + " for " + image.variant + " (sm_" + std::to_string(image.arch)
                    + (image.archSpecific ? "a" : "") + " cubin; it needs a driver as new as Triton's ptxas)");
        }
        return DIT_TRITON_SUCCESS;
    }
    std::vector<char> log(kJitLogBytes, '\0');
    CUjit_option options[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
    void* values[] = {log.data(), reinterpret_cast<void*>(static_cast<uintptr_t>(log.size() - 1))};
    if (CUresult const result = d.moduleLoadDataEx(&module, image.data, 2, options, values))
    {
        return fail(DIT_TRITON_CUDA_ERROR,
            cudaError(d, result, "cuModuleLoadDataEx") + " JIT-compiling the PTX of " + image.variant + ": "
                + log.data());
    }
    return DIT_TRITON_SUCCESS;
}

// The kernel of `variant` in this context, loaded on first use (caller holds cacheMutex).
int32_t kernelFor(Driver const& d, ContextKernels& state, char const* variant, LoadedKernel*& out)
{
    auto found = state.byVariant.find(variant);
    if (found != state.byVariant.end())
    {
        out = &found->second;
        return DIT_TRITON_SUCCESS;
    }
    std::string why;
    KernelImage const* image = selectImage(embeddedKernels(), variant, state.major, state.minor, why);
    if (image == nullptr)
    {
        return fail(DIT_TRITON_NO_KERNEL, why);
    }
    if (image->sharedBytes > state.sharedLimit)
    {
        return fail(DIT_TRITON_NO_KERNEL,
            std::string(variant) + " needs " + std::to_string(image->sharedBytes)
                + " bytes of shared memory per block; this device allows " + std::to_string(state.sharedLimit));
    }
    CUmodule module = nullptr;
    if (int32_t const status = loadModule(d, *image, module))
    {
        return status;
    }
    CUfunction function = nullptr;
    CUresult result = d.moduleGetFunction(&function, module, image->symbol);
    char const* call = "cuModuleGetFunction";
    if (result == CUDA_SUCCESS && image->sharedBytes > kDefaultSharedLimit)
    {
        call = "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)";
        result = d.funcSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, image->sharedBytes);
    }
    if (result != CUDA_SUCCESS)
    {
        d.moduleUnload(module);
        return fail(DIT_TRITON_CUDA_ERROR, cudaError(d, result, call) + " for " + variant);
    }
    out = &state.byVariant.emplace(variant, LoadedKernel{function, image, false}).first->second;
    return DIT_TRITON_SUCCESS;
}

// The kernel's parameters are the plan's arguments and the two scratch pointers (tritonLauncher.h):
// names from the embedded table, count and sizes from the driver where it can say.
int32_t checkAbi(Driver const& d, LoadedKernel& kernel, LaunchPlan const& plan)
{
    std::string why;
    if (!argumentsMatch(*kernel.image, plan, why))
    {
        return fail(DIT_TRITON_INTERNAL_ERROR, why);
    }
    if (d.funcGetParamInfo != nullptr)
    {
        std::size_t const expected = static_cast<std::size_t>(plan.count) + 2;
        for (std::size_t i = 0; i <= expected; ++i)
        {
            std::size_t offset = 0;
            std::size_t size = 0;
            CUresult const result = d.funcGetParamInfo(kernel.function, i, &offset, &size);
            std::size_t const wanted = i < static_cast<std::size_t>(plan.count) && !plan.params[i].pointer ? 4 : 8;
            bool const ok = i == expected ? result != CUDA_SUCCESS : result == CUDA_SUCCESS && size == wanted;
            if (!ok)
            {
                return fail(DIT_TRITON_INTERNAL_ERROR,
                    std::string("the kernel of ") + plan.variant + " does not take the launcher's " + std::to_string(expected)
                        + " parameters (arguments, global and profile scratch): parameter " + std::to_string(i)
                        + (result == CUDA_SUCCESS ? " has " + std::to_string(size) + " bytes" : " is missing"));
            }
        }
    }
    kernel.abiChecked = true;
    return DIT_TRITON_SUCCESS;
}

int32_t launch(LaunchPlan& plan, CUstream stream)
{
    Driver const& d = driver();
    if (!d.error.empty())
    {
        return fail(DIT_TRITON_CUDA_ERROR, d.error);
    }
    unsigned long long context = 0;
    if (int32_t const status = currentContext(d, context))
    {
        return status;
    }
    CUfunction function = nullptr;
    KernelImage const* image = nullptr;
    {
        std::lock_guard<std::mutex> lock(cacheMutex);
        ContextKernels* state = nullptr;
        LoadedKernel* kernel = nullptr;
        if (int32_t const status = contextKernels(d, context, state))
        {
            return status;
        }
        if (int32_t const status = kernelFor(d, *state, plan.variant, kernel))
        {
            return status;
        }
        if (!kernel->abiChecked)
        {
            if (int32_t const status = checkAbi(d, *kernel, plan))
            {
                return status;
            }
        }
        function = kernel->function;
        image = kernel->image;
    }
    uint32_t grid = 0;
    std::string why;
    if (DitTritonStatus const status = checkPlan(*image, plan, grid, why))
    {
        return fail(status, why);
    }
    void* params[LaunchPlan::kMaxParams + 2];
    for (int i = 0; i < plan.count; ++i)
    {
        Param& param = plan.params[i];
        params[i] = param.pointer ? static_cast<void*>(&param.address) : static_cast<void*>(&param.value);
    }
    CUdeviceptr globalScratch = 0;  // every variant has global_scratch_size 0
    CUdeviceptr profileScratch = 0;  // and profile_scratch_size 0
    params[plan.count] = &globalScratch;
    params[plan.count + 1] = &profileScratch;
    unsigned const threads = 32u * static_cast<unsigned>(image->numWarps);
    if (CUresult const result = d.launchKernel(function, grid, 1, 1, threads, 1, 1,
            static_cast<unsigned>(image->sharedBytes), stream, params, nullptr))
    {
        return fail(DIT_TRITON_CUDA_ERROR, cudaError(d, result, "cuLaunchKernel") + " for " + plan.variant);
    }
    return DIT_TRITON_SUCCESS;
}

int32_t run(DitTritonStatus planned, std::string const& why, LaunchPlan& plan, CUstream stream)
{
    if (planned != DIT_TRITON_SUCCESS)
    {
        return fail(planned, why);
    }
    return plan.empty() ? DIT_TRITON_SUCCESS : launch(plan, stream);
}

int32_t preload()
{
    Driver const& d = driver();
    if (!d.error.empty())
    {
        return fail(DIT_TRITON_CUDA_ERROR, d.error);
    }
    unsigned long long context = 0;
    if (int32_t const status = currentContext(d, context))
    {
        return status;
    }
    std::lock_guard<std::mutex> lock(cacheMutex);
    ContextKernels* state = nullptr;
    if (int32_t const status = contextKernels(d, context, state))
    {
        return status;
    }
    KernelTable const table = embeddedKernels();
    for (std::size_t i = 0; i < table.count; ++i)
    {
        std::string why;
        if (state->byVariant.count(table.images[i].variant) != 0
            || selectImage(table, table.images[i].variant, state->major, state->minor, why) == nullptr)
        {
            continue;
        }
        LoadedKernel* kernel = nullptr;
        if (int32_t const status = kernelFor(d, *state, table.images[i].variant, kernel))
        {
            if (status != DIT_TRITON_NO_KERNEL)  // too much shared memory for this device: skipped
            {
                return status;
            }
        }
    }
    return DIT_TRITON_SUCCESS;
}

} // namespace
} // namespace triton
} // namespace dit_export

using namespace dit_export::triton;

namespace
{

// Runs a C API call's body: nothing thrown crosses the C API.
template <typename Body>
int32_t guarded(Body&& body) noexcept
{
    try
    {
        return body();
    }
    catch (std::exception const& e)
    {
        return failUnexpected(e.what());
    }
    catch (...)
    {
        return failUnexpected("unknown exception");
    }
}

} // namespace

extern "C" int32_t ditTritonInt8Gemm(void const* a, float const* aScale, void const* w, uint8_t const* factor,
    float const* wScale, float const* bias, void* y, int32_t m, int32_t n, int32_t k, int32_t weightBits,
    int32_t activation, DitTritonStream stream)
{
    return guarded([&]() -> int32_t {
        LaunchPlan plan;
        std::string why;
        DitTritonStatus const planned
            = planInt8Gemm(a, aScale, w, factor, wScale, bias, y, m, n, k, weightBits, activation, plan, why);
        return run(planned, why, plan, stream);
    });
}

extern "C" int32_t ditTritonFp8Gemm(void const* a, float const* aScale, void const* w, uint8_t const* offset,
    float const* wScale, float const* bias, void* y, int32_t m, int32_t n, int32_t k, int32_t weightBits,
    int32_t fp4Format, DitTritonStream stream)
{
    return guarded([&]() -> int32_t {
        LaunchPlan plan;
        std::string why;
        DitTritonStatus const planned
            = planFp8Gemm(a, aScale, w, offset, wScale, bias, y, m, n, k, weightBits, fp4Format, plan, why);
        return run(planned, why, plan, stream);
    });
}

extern "C" int32_t ditTritonVqGemm(void const* a, uint8_t const* indices, void const* codebook, float const* bias,
    void* y, int32_t m, int32_t n, int32_t k, int32_t dim, DitTritonStream stream)
{
    return guarded([&]() -> int32_t {
        LaunchPlan plan;
        std::string why;
        DitTritonStatus const planned = planVqGemm(a, indices, codebook, bias, y, m, n, k, dim, plan, why);
        return run(planned, why, plan, stream);
    });
}

extern "C" int32_t ditTritonQuantizeRows(void const* x, void* codes, float* scale, float const* table,
    int64_t const* bucket, uint8_t const* groups, int32_t m, int32_t k, int32_t samples, int32_t format,
    DitTritonStream stream)
{
    return guarded([&]() -> int32_t {
        LaunchPlan plan;
        std::string why;
        DitTritonStatus const planned
            = planQuantizeRows(x, codes, scale, table, bucket, groups, m, k, samples, format, plan, why);
        return run(planned, why, plan, stream);
    });
}

extern "C" int32_t ditTritonPreload(void)
{
    return guarded([] { return preload(); });
}

extern "C" char const* ditTritonKernelsVersion(void)
{
    return embeddedKernels().tritonVersion;
}

extern "C" char const* ditTritonLastError(void)
{
    return lastError.c_str();
}
