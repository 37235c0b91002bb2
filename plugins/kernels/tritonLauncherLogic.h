// The part of the Triton kernel launcher (tritonLauncher.h) that needs no GPU, no driver and no
// CUDA header: which embedded image runs on a device, and each C API call's checked argument list
// (a LaunchPlan). tritonLauncher.cpp adds the driver calls; plugins/tests/tritonLauncherCheck.cpp
// tests this part on any machine.
#pragma once

#include "tritonKernelTable.h"
#include "tritonLauncher.h"

#include <cstdint>
#include <string>

namespace dit_export
{
namespace triton
{

// Whether an image loads on a device of compute capability major.minor: a cubin on its own major
// architecture from its minor on (sm_80 on 8.0, 8.6, 8.7), an arch-specific one (sm_90a) on
// exactly its architecture, a PTX on its target and any newer one.
bool imageRunsOn(KernelImage const& image, int major, int minor);

// The image of `variant` for compute capability major.minor: the cubin of the highest arch that
// runs there, else the variant's PTX if it runs there; nullptr (and `why`) when neither does.
KernelImage const* selectImage(KernelTable const& table, char const* variant, int major, int minor, std::string& why);

// One kernel argument: a device pointer or an i32.
struct Param
{
    char const* name;
    bool pointer;
    uint64_t address;
    int32_t value;
};

// A checked launch: the variant, its arguments in the kernel's order, and the problem's extent.
struct LaunchPlan
{
    static constexpr int kMaxParams = 12;

    char const* variant = nullptr;
    int64_t rows = 0;           // M
    int64_t cols = 0;           // N (GEMMs); the quantizer runs one program per row
    int32_t k = 0;
    bool kStepDividesK = false;  // 4-bit weights: the K loop has no masks, so K % BK == 0
    Param params[kMaxParams] = {};
    int count = 0;

    bool empty() const
    {
        return rows == 0 || cols == 0;
    }
    void pointer(char const* name, void const* address);
    void int32(char const* name, int32_t value);
};

// Each C API call's arguments checked and turned into a plan (tritonLauncher.h documents them).
// kOk with plan.empty(): nothing to launch (M = 0 or N = 0; pointers are then not checked).
DitTritonStatus planInt8Gemm(void const* a, float const* aScale, void const* w, uint8_t const* factor,
    float const* wScale, float const* bias, void* y, int32_t m, int32_t n, int32_t k, int32_t weightBits,
    int32_t activation, LaunchPlan& plan, std::string& why);
DitTritonStatus planFp8Gemm(void const* a, float const* aScale, void const* w, uint8_t const* offset,
    float const* wScale, float const* bias, void* y, int32_t m, int32_t n, int32_t k, int32_t weightBits,
    int32_t fp4Format, LaunchPlan& plan, std::string& why);
DitTritonStatus planVqGemm(void const* a, uint8_t const* indices, void const* codebook, float const* bias, void* y,
    int32_t m, int32_t n, int32_t k, int32_t dim, LaunchPlan& plan, std::string& why);
DitTritonStatus planQuantizeRows(void const* x, void* codes, float* scale, float const* table, int64_t const* bucket,
    uint8_t const* groups, int32_t m, int32_t k, int32_t samples, int32_t format, LaunchPlan& plan, std::string& why);

// Whether the image's kernel takes exactly the plan's arguments (names, in order).
bool argumentsMatch(KernelImage const& image, LaunchPlan const& plan, std::string& why);

// The plan on the image: its arguments match, K suits its K step, and its grid (programs along x)
// fits the launch limits. Sets grid.
DitTritonStatus checkPlan(KernelImage const& image, LaunchPlan const& plan, uint32_t& grid, std::string& why);

} // namespace triton
} // namespace dit_export
