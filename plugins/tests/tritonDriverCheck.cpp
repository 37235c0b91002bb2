// The Triton kernel launcher's driver side (tritonLauncher.cpp) against the stand-in libcuda.so.1 of
// fakeCudaDriver.h, with the real embedded kernel table: no GPU needed. Prints "ok N" and exits 0
// when every check holds. tests/test_triton_launcher.py runs it.
#include "fakeCudaDriver.h"
#include "tritonKernelTable.h"
#include "tritonLauncher.h"

#include <atomic>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <vector>

extern "C" void fakeCudaSetThreadContext(unsigned long long context);

namespace
{

std::atomic<int> checks{0};
std::atomic<int> failures{0};

void check(bool ok, char const* what, int line)
{
    ++checks;
    if (!ok)
    {
        ++failures;
        std::printf("FAIL line %d: %s (last error: %s)\n", line, what, ditTritonLastError());
    }
}

#define CHECK(condition) check((condition), #condition, __LINE__)

FakeCudaState& fake = *fakeCudaState();

// Parameter sizes the stand-in reports: pointers, then i32s, then the two scratch pointers.
void layout(int pointers, int ints, int scratch = 2)
{
    fake.paramCount = 0;
    for (int i = 0; i < pointers; ++i)
    {
        fake.paramSizes[fake.paramCount++] = 8;
    }
    for (int i = 0; i < ints; ++i)
    {
        fake.paramSizes[fake.paramCount++] = 4;
    }
    for (int i = 0; i < scratch; ++i)
    {
        fake.paramSizes[fake.paramCount++] = 8;
    }
}

void device(unsigned long long context, int major, int minor, int sharedOptin = 227 * 1024)
{
    fake.context = context;
    fake.major = major;
    fake.minor = minor;
    fake.sharedOptin = sharedOptin;
}

template <typename T>
T* at(uintptr_t address)
{
    return reinterpret_cast<T*>(address);
}

DitTritonStream const kStream = reinterpret_cast<DitTritonStream>(0x5000);

int32_t int8Gemm(int32_t m, int32_t n, int32_t k, int32_t bits = 8)
{
    return ditTritonInt8Gemm(at<void const>(0x100000), at<float const>(0x200000), at<void const>(0x300000),
        bits == 4 ? at<uint8_t const>(0x400000) : nullptr, at<float const>(0x500000), at<float const>(0x600000),
        at<void>(0x700000), m, n, k, bits, DIT_TRITON_ACT_INT8, kStream);
}

void noContextAndEmptyProblems()
{
    layout(7, 3);
    device(0, 9, 0);
    CHECK(int8Gemm(256, 1152, 1152) == DIT_TRITON_CUDA_ERROR);
    CHECK(std::strstr(ditTritonLastError(), "no CUDA context is current") != nullptr);
    CHECK(ditTritonPreload() == DIT_TRITON_CUDA_ERROR);
    // M = 0 needs neither a context nor pointers, and launches nothing.
    CHECK(ditTritonInt8Gemm(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 64, 64, 8,
              DIT_TRITON_ACT_INT8, kStream)
        == DIT_TRITON_SUCCESS);
    CHECK(ditTritonQuantizeRows(
              nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 64, 1, DIT_TRITON_QUANT_INT8, kStream)
        == DIT_TRITON_SUCCESS);
    CHECK(fake.launches == 0 && fake.cubinLoads == 0);
    // Argument errors come before any driver call.
    CHECK(int8Gemm(16, 64, 100) == DIT_TRITON_INVALID_ARGUMENT);
    CHECK(std::strstr(ditTritonLastError(), "K = 100") != nullptr);
}

void launchOnHopper()
{
    layout(7, 3);
    device(1, 9, 0);
    CHECK(int8Gemm(256, 1152, 1152) == DIT_TRITON_SUCCESS);
    CHECK(fake.cubinLoads == 1 && fake.ptxLoads == 0 && fake.launches == 1);
    CHECK(std::strcmp(fake.symbol, "int8_gemm_kernel") == 0);
    CHECK(fake.grid[0] == 2 * 9 && fake.grid[1] == 1 && fake.grid[2] == 1);  // 128 x 128 tiles
    CHECK(fake.block[0] == 256 && fake.block[1] == 1 && fake.block[2] == 1);  // 8 warps
    CHECK(fake.sharedBytes == 131072 && fake.sharedAttribute == 131072);
    CHECK(fake.stream == kStream);
    uint64_t const expected[12] = {0x100000, 0x200000, 0x300000, 0x500000, 0x500000, 0x600000, 0x700000, 256, 1152,
        1152, 0, 0};
    CHECK(fake.launchedParams == 12 && std::memcmp(fake.paramValues, expected, sizeof(expected)) == 0);

    // Loaded once per context: a second launch reuses the module.
    CHECK(int8Gemm(512, 64, 64) == DIT_TRITON_SUCCESS);
    CHECK(fake.cubinLoads == 1 && fake.launches == 2 && fake.grid[0] == 4);
    // Another variant, another module; small tiles: 4 warps, 64 x 64.
    CHECK(int8Gemm(100, 1152, 1152) == DIT_TRITON_SUCCESS);
    CHECK(fake.cubinLoads == 2 && fake.block[0] == 128 && fake.grid[0] == 2 * 18);
    // Another context loads its own.
    device(2, 9, 0);
    CHECK(int8Gemm(256, 1152, 1152) == DIT_TRITON_SUCCESS);
    CHECK(fake.cubinLoads == 3);

    // 4-bit weights: K must be a multiple of the kernel's K step.
    CHECK(int8Gemm(256, 64, 192, 4) == DIT_TRITON_INVALID_ARGUMENT);
    CHECK(std::strstr(ditTritonLastError(), "K step 128") != nullptr);
    CHECK(int8Gemm(256, 64, 256, 4) == DIT_TRITON_SUCCESS && fake.paramValues[3] == 0x400000);

    layout(6, 3);
    float* const scale = at<float>(0x800000);
    CHECK(ditTritonQuantizeRows(at<void const>(0x100000), at<void>(0x900000), scale, at<float const>(0xa00000),
              at<int64_t const>(0xb00000), nullptr, 512, 1152, 2, DIT_TRITON_QUANT_FP8, kStream)
        == DIT_TRITON_SUCCESS);
    // groups_ptr, unused but for INT4, gets the scale pointer
    uint64_t const quantize[11] = {0x100000, 0x900000, 0x800000, 0xa00000, 0xb00000, 0x800000, 1152, 256, 1, 0, 0};
    CHECK(fake.grid[0] == 512 && fake.block[0] == 128 && fake.sharedBytes == 0
        && std::memcmp(fake.paramValues, quantize, sizeof(quantize)) == 0);
    CHECK(std::strcmp(fake.symbol, "quantize_rows_kernel") == 0);
}

void otherDevices()
{
    // Newer than every cubin: the PTX, JIT-compiled.
    layout(7, 3);
    device(3, 10, 0);
    int const cubins = fake.cubinLoads;
    CHECK(int8Gemm(64, 64, 64) == DIT_TRITON_SUCCESS);
    CHECK(fake.ptxLoads == 1 && fake.cubinLoads == cubins);
    // Ampere has no FP8 kernels.
    device(4, 8, 6);
    CHECK(ditTritonFp8Gemm(at<void const>(0x100000), at<float const>(0x200000), at<void const>(0x300000), nullptr,
              at<float const>(0x500000), at<float const>(0x600000), at<void>(0x700000), 64, 64, 64, 8, 0, kStream)
        == DIT_TRITON_NO_KERNEL);
    CHECK(std::strstr(ditTritonLastError(), "no image of fp8_gemm.w8.small runs on compute capability 8.6")
        != nullptr);
    // sm_86 runs the sm_80 cubins.
    CHECK(int8Gemm(64, 64, 64) == DIT_TRITON_SUCCESS && fake.cubinLoads == cubins + 1);
    // Too little shared memory for the large tiles.
    device(5, 8, 0, 64 * 1024);
    CHECK(int8Gemm(256, 64, 64) == DIT_TRITON_NO_KERNEL);
    CHECK(std::strstr(ditTritonLastError(), "bytes of shared memory") != nullptr);
    // A kernel whose parameters are not the ABI's (here: no scratch pointers) is refused.
    device(6, 9, 0);
    layout(7, 3, 0);
    CHECK(int8Gemm(256, 64, 64) == DIT_TRITON_INTERNAL_ERROR);
    CHECK(std::strstr(ditTritonLastError(), "does not take the launcher's 12 parameters") != nullptr);
    layout(7, 3);
}

void preloadAndThreads()
{
    device(7, 9, 0);
    int const before = fake.cubinLoads;
    CHECK(ditTritonPreload() == DIT_TRITON_SUCCESS);
    std::set<std::string> variants;
    dit_export::triton::KernelTable const table = dit_export::triton::embeddedKernels();
    for (std::size_t i = 0; i < table.count; ++i)
    {
        variants.insert(table.images[i].variant);
    }
    CHECK(fake.cubinLoads - before == static_cast<int>(variants.size()));
    CHECK(ditTritonPreload() == DIT_TRITON_SUCCESS && fake.cubinLoads - before == static_cast<int>(variants.size()));

    // Threads on two new contexts, launching at once: each context loads each variant once, and
    // each thread keeps its own last error.
    int const loads = fake.cubinLoads;
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t)
    {
        threads.emplace_back([t] {
            fakeCudaSetThreadContext(t % 2 == 0 ? 8 : 9);
            for (int i = 0; i < 50; ++i)
            {
                CHECK(int8Gemm(i % 2 ? 256 : 64, 1152, 1152) == DIT_TRITON_SUCCESS);
            }
            if (t == 0)
            {
                CHECK(int8Gemm(16, 64, 100) == DIT_TRITON_INVALID_ARGUMENT);
            }
            CHECK((std::strstr(ditTritonLastError(), "K = 100") != nullptr) == (t == 0));
            fakeCudaSetThreadContext(~0ull);
        });
    }
    for (std::thread& thread : threads)
    {
        thread.join();
    }
    CHECK(fake.cubinLoads - loads == 2 * 2);
}

} // namespace

int main()
{
    noContextAndEmptyProblems();
    launchOnHopper();
    otherDevices();
    preloadAndThreads();
    CHECK(std::strcmp(ditTritonKernelsVersion(), dit_export::triton::embeddedKernels().tritonVersion) == 0);
    if (failures != 0)
    {
        std::printf("%d of %d checks failed\n", failures.load(), checks.load());
        return 1;
    }
    std::printf("ok %d\n", checks.load());
    return 0;
}
