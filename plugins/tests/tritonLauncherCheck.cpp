// Host check of the Triton kernel launcher's logic (tritonLauncherLogic.h): runs without a GPU, a
// driver or CUDA headers. tests/test_triton_launcher.py runs it.
//
//   tritonLauncherCheck                 unit checks on a made-up table; prints "ok N", exit 0
//   tritonLauncherCheck select MAJ MIN  the embedded table: each variant's image for that device
//   tritonLauncherCheck table           the embedded table: one line per image (FNV-1a of its bytes)
#include "tritonLauncherLogic.h"

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>

using namespace dit_export::triton;

namespace
{

int checks = 0;
int failures = 0;

void check(bool ok, char const* what, int line, std::string const& detail = "")
{
    ++checks;
    if (!ok)
    {
        ++failures;
        std::printf("FAIL line %d: %s %s\n", line, what, detail.c_str());
    }
}

#define CHECK(condition) check((condition), #condition, __LINE__)
#define CHECK_WHY(condition, why) check((condition), #condition, __LINE__, (why))

std::string describe(KernelImage const* image)
{
    if (image == nullptr)
    {
        return "none";
    }
    return std::string(image->ptx ? "PTX sm_" : "sm_") + std::to_string(image->arch) + (image->archSpecific ? "a" : "");
}

unsigned char const kBytes[1] = {0};
// variant, family, arch, archSpecific, ptx, symbol, warps, shared, BM, BN, BK, arguments, data, size
KernelImage const kImages[] = {
    {"g", "int8", 80, false, false, "k", 4, 1024, 64, 64, 128, "a_ptr,K", kBytes, 1},
    {"g", "int8", 89, false, false, "k", 4, 1024, 64, 64, 128, "a_ptr,K", kBytes, 1},
    {"g", "int8", 90, true, false, "k", 4, 1024, 64, 64, 128, "a_ptr,K", kBytes, 1},
    {"g", "int8", 80, false, true, "k", 4, 1024, 64, 64, 128, "a_ptr,K", kBytes, 1},
    {"f", "fp8", 89, false, false, "k", 4, 1024, 64, 64, 128, "a_ptr,K", kBytes, 1},
    {"f", "fp8", 90, true, false, "k", 4, 1024, 64, 64, 128, "a_ptr,K", kBytes, 1},
    {"f", "fp8", 89, false, true, "k", 4, 1024, 64, 64, 128, "a_ptr,K", kBytes, 1},
    {"h", "fp8", 90, true, false, "k", 4, 1024, 64, 64, 128, "a_ptr,K", kBytes, 1},
};
KernelTable const kTable{kImages, sizeof(kImages) / sizeof(kImages[0]), "test", 128};

std::string selected(char const* variant, int major, int minor)
{
    std::string why;
    KernelImage const* image = selectImage(kTable, variant, major, minor, why);
    return image == nullptr ? "none: " + why : describe(image);
}

void selectionChecks()
{
    struct Case
    {
        char const* variant;
        int major;
        int minor;
        char const* expected;
    };
    Case const cases[] = {
        {"g", 8, 0, "sm_80"}, {"g", 8, 6, "sm_80"}, {"g", 8, 7, "sm_80"}, {"g", 8, 9, "sm_89"},
        {"g", 9, 0, "sm_90a"}, {"g", 10, 0, "PTX sm_80"}, {"g", 12, 0, "PTX sm_80"}, {"g", 7, 5, "none"},
        {"f", 8, 0, "none"}, {"f", 8, 6, "none"}, {"f", 8, 9, "sm_89"}, {"f", 9, 0, "sm_90a"},
        {"f", 10, 0, "PTX sm_89"}, {"f", 12, 1, "PTX sm_89"}, {"h", 9, 0, "sm_90a"}, {"h", 10, 0, "none"},
        {"h", 8, 9, "none"}, {"missing", 9, 0, "none"},
    };
    for (Case const& c : cases)
    {
        std::string const got = selected(c.variant, c.major, c.minor);
        CHECK_WHY(got.rfind(c.expected, 0) == 0,
            std::string(c.variant) + " on " + std::to_string(c.major) + "." + std::to_string(c.minor) + ": " + got);
    }
    std::string why;
    CHECK(selectImage(kTable, "f", 8, 6, why) == nullptr && why.find("no image of f") != std::string::npos
        && why.find("sm_89, sm_90a, PTX sm_89") != std::string::npos);
    CHECK(selectImage(kTable, "missing", 9, 0, why) == nullptr && why.find("no kernel missing") != std::string::npos);
}

// Aligned fake device addresses: the plan never dereferences them.
void const* address(uintptr_t value)
{
    return reinterpret_cast<void const*>(value);
}

float const* floats(uintptr_t value)
{
    return static_cast<float const*>(address(value));
}

uint8_t const* bytes(uintptr_t value)
{
    return static_cast<uint8_t const*>(address(value));
}

std::string names(LaunchPlan const& plan)
{
    std::string out;
    for (int i = 0; i < plan.count; ++i)
    {
        out += (i ? "," : "") + std::string(plan.params[i].name);
    }
    return out;
}

void int8Checks()
{
    LaunchPlan plan;
    std::string why;
    auto const a = address(0x1000);
    auto const aScale = floats(0x2000);
    auto const w = address(0x3000);
    auto const factor = bytes(0x4000);
    auto const wScale = floats(0x5000);
    auto const bias = floats(0x6000);
    void* const y = reinterpret_cast<void*>(0x7000);

    CHECK(planInt8Gemm(a, aScale, w, nullptr, wScale, bias, y, 256, 1152, 1152, 8, DIT_TRITON_ACT_INT8, plan, why)
        == DIT_TRITON_SUCCESS);
    CHECK(std::strcmp(plan.variant, "int8_gemm.w8.large") == 0 && !plan.empty() && !plan.kStepDividesK);
    CHECK(names(plan) == "a_ptr,a_scale_ptr,w_ptr,factor_ptr,w_scale_ptr,bias_ptr,y_ptr,M,N,K");
    CHECK(plan.params[0].pointer && plan.params[0].address == 0x1000 && plan.params[1].address == 0x2000);
    CHECK(plan.params[3].address == 0x5000);  // unused factor: w_scale, as the Python wrapper passes
    CHECK(!plan.params[7].pointer && plan.params[7].value == 256 && plan.params[8].value == 1152
        && plan.params[9].value == 1152);

    CHECK(planInt8Gemm(a, aScale, w, nullptr, wScale, bias, y, 128, 1152, 1152, 8, DIT_TRITON_ACT_INT8, plan, why)
            == DIT_TRITON_SUCCESS
        && std::strcmp(plan.variant, "int8_gemm.w8.small") == 0);
    CHECK(planInt8Gemm(a, aScale, w, factor, wScale, bias, y, 129, 64, 256, 4, DIT_TRITON_ACT_INT8, plan, why)
            == DIT_TRITON_SUCCESS
        && std::strcmp(plan.variant, "int8_gemm.w4.large") == 0 && plan.kStepDividesK && plan.params[3].address == 0x4000);
    CHECK(planInt8Gemm(a, nullptr, w, nullptr, wScale, bias, y, 1000, 64, 256, 8, DIT_TRITON_ACT_FP16, plan, why)
            == DIT_TRITON_SUCCESS
        && std::strcmp(plan.variant, "int8_gemm.w8.a16.small") == 0 && plan.params[1].address == 0x5000);
    CHECK(planInt8Gemm(a, nullptr, w, factor, wScale, bias, y, 2, 64, 256, 4, DIT_TRITON_ACT_FP16, plan, why)
            == DIT_TRITON_SUCCESS
        && std::strcmp(plan.variant, "int8_gemm.w4.a16.small") == 0);

    // Empty problems launch nothing and need no pointers.
    CHECK(planInt8Gemm(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 64, 64, 8,
              DIT_TRITON_ACT_INT8, plan, why)
            == DIT_TRITON_SUCCESS
        && plan.empty());
    CHECK(planInt8Gemm(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 16, 0, 64, 8,
              DIT_TRITON_ACT_INT8, plan, why)
            == DIT_TRITON_SUCCESS
        && plan.empty());

    auto refused = [&](DitTritonStatus status, char const* needle) {
        return status == DIT_TRITON_INVALID_ARGUMENT && why.find(needle) != std::string::npos
            && why.rfind("ditTritonInt8Gemm: ", 0) == 0;
    };
    CHECK_WHY(refused(planInt8Gemm(a, aScale, w, nullptr, wScale, bias, y, 16, 72, 64, 8, DIT_TRITON_ACT_INT8, plan,
                          why),
                  "N = 72 must be a multiple of 16"),
        why);
    CHECK_WHY(refused(planInt8Gemm(a, aScale, w, nullptr, wScale, bias, y, 16, 64, 100, 8, DIT_TRITON_ACT_INT8, plan,
                          why),
                  "K = 100 must be a positive multiple of 16"),
        why);
    CHECK(refused(planInt8Gemm(a, aScale, w, nullptr, wScale, bias, y, 16, 64, 0, 8, DIT_TRITON_ACT_INT8, plan, why),
        "K = 0"));
    CHECK(refused(planInt8Gemm(a, aScale, w, nullptr, wScale, bias, y, -1, 64, 64, 8, DIT_TRITON_ACT_INT8, plan, why),
        "must not be negative"));
    CHECK(refused(
        planInt8Gemm(a, aScale, w, nullptr, wScale, bias, y, 1 << 20, 64, 4096, 8, DIT_TRITON_ACT_INT8, plan, why),
        "below 2^31"));
    CHECK(refused(planInt8Gemm(a, aScale, w, nullptr, wScale, bias, y, 16, 64, 64, 3, DIT_TRITON_ACT_INT8, plan, why),
        "weightBits must be 8 or 4"));
    CHECK(refused(planInt8Gemm(a, aScale, w, nullptr, wScale, bias, y, 16, 64, 64, 8, 7, plan, why), "activation"));
    CHECK(refused(planInt8Gemm(address(0x1008), aScale, w, nullptr, wScale, bias, y, 16, 64, 64, 8,
                      DIT_TRITON_ACT_INT8, plan, why),
        "a (0x1008) is not 16-byte aligned"));
    CHECK(refused(planInt8Gemm(a, aScale, w, nullptr, wScale, nullptr, y, 16, 64, 64, 8, DIT_TRITON_ACT_INT8, plan,
                      why),
        "bias is NULL"));
    CHECK(refused(planInt8Gemm(a, nullptr, w, nullptr, wScale, bias, y, 16, 64, 64, 8, DIT_TRITON_ACT_INT8, plan, why),
        "aScale is NULL"));
    CHECK(refused(planInt8Gemm(a, aScale, w, nullptr, wScale, bias, y, 16, 64, 64, 8, DIT_TRITON_ACT_FP16, plan, why),
        "aScale must be NULL"));
    CHECK(refused(planInt8Gemm(a, aScale, w, nullptr, wScale, bias, y, 16, 64, 256, 4, DIT_TRITON_ACT_INT8, plan, why),
        "factor is NULL"));
    CHECK(refused(planInt8Gemm(a, aScale, w, factor, wScale, bias, y, 16, 64, 256, 8, DIT_TRITON_ACT_INT8, plan, why),
        "factor must be NULL"));
    CHECK(refused(planInt8Gemm(a, aScale, w, bytes(0x4004), wScale, bias, y, 16, 64, 256, 4, DIT_TRITON_ACT_INT8,
                      plan, why),
        "factor (0x4004) is not 16-byte aligned"));
}

void otherPlanChecks()
{
    LaunchPlan plan;
    std::string why;
    auto const a = address(0x1000);
    auto const aScale = floats(0x2000);
    auto const w = address(0x3000);
    auto const offset = bytes(0x4000);
    auto const wScale = floats(0x5000);
    auto const bias = floats(0x6000);
    void* const y = reinterpret_cast<void*>(0x7000);

    CHECK(planFp8Gemm(a, aScale, w, nullptr, wScale, bias, y, 512, 64, 64, 8, 7, plan, why) == DIT_TRITON_SUCCESS
        && std::strcmp(plan.variant, "fp8_gemm.w8.large") == 0
        && names(plan) == "a_ptr,a_scale_ptr,w_ptr,offset_ptr,w_scale_ptr,bias_ptr,y_ptr,M,N,K"
        && plan.params[3].address == 0x5000);
    CHECK(planFp8Gemm(a, aScale, w, offset, wScale, bias, y, 16, 64, 128, 4, DIT_TRITON_FP4_E2M1, plan, why)
            == DIT_TRITON_SUCCESS
        && std::strcmp(plan.variant, "fp8_gemm.fp4.e2m1.small") == 0 && plan.kStepDividesK
        && plan.params[3].address == 0x4000);
    CHECK(planFp8Gemm(a, aScale, w, offset, wScale, bias, y, 512, 64, 128, 4, DIT_TRITON_FP4_E1M2, plan, why)
            == DIT_TRITON_SUCCESS
        && std::strcmp(plan.variant, "fp8_gemm.fp4.e1m2.large") == 0);
    CHECK(planFp8Gemm(a, aScale, w, offset, wScale, bias, y, 16, 64, 128, 4, DIT_TRITON_FP4_E3M0, plan, why)
            == DIT_TRITON_SUCCESS
        && std::strcmp(plan.variant, "fp8_gemm.fp4.e3m0.small") == 0);
    CHECK(planFp8Gemm(a, aScale, w, offset, wScale, bias, y, 16, 64, 128, 4, 3, plan, why)
            == DIT_TRITON_INVALID_ARGUMENT
        && why.find("fp4Format must be") != std::string::npos);
    CHECK(planFp8Gemm(a, aScale, w, nullptr, wScale, bias, y, 16, 64, 128, 4, 0, plan, why)
            == DIT_TRITON_INVALID_ARGUMENT
        && why.find("offset is NULL") != std::string::npos);
    CHECK(planFp8Gemm(a, aScale, w, offset, wScale, bias, y, 16, 64, 128, 8, 0, plan, why)
            == DIT_TRITON_INVALID_ARGUMENT
        && why.find("offset must be NULL") != std::string::npos);
    CHECK(planFp8Gemm(a, aScale, w, nullptr, wScale, bias, y, 16, 64, 128, 16, 0, plan, why)
        == DIT_TRITON_INVALID_ARGUMENT);
    // float16 activations (aScale NULL) on E4M3 weights: int8_gemm's FP16 path, whatever M
    CHECK(planFp8Gemm(a, nullptr, w, nullptr, wScale, bias, y, 512, 64, 128, 8, 0, plan, why) == DIT_TRITON_SUCCESS
        && std::strcmp(plan.variant, "fp8_gemm.w8.a16.small") == 0
        && names(plan) == "a_ptr,a_scale_ptr,w_ptr,factor_ptr,w_scale_ptr,bias_ptr,y_ptr,M,N,K"
        && plan.params[1].address == 0x5000 && plan.params[3].address == 0x5000);
    CHECK(planFp8Gemm(a, nullptr, w, offset, wScale, bias, y, 16, 64, 128, 4, 0, plan, why)
            == DIT_TRITON_INVALID_ARGUMENT
        && why.find("aScale NULL") != std::string::npos);

    auto const indices = bytes(0x8000);
    auto const codebook = address(0x9000);
    CHECK(planVqGemm(a, indices, codebook, bias, y, 300, 1152, 1152, 4, plan, why) == DIT_TRITON_SUCCESS
        && std::strcmp(plan.variant, "vq_gemm.d4.large") == 0
        && names(plan) == "a_ptr,a_scale_ptr,index_ptr,codebook_ptr,bias_ptr,y_ptr,M,N,K"
        && plan.params[1].address == 0x9000);
    CHECK(planVqGemm(a, indices, codebook, bias, y, 8, 64, 64, 2, plan, why) == DIT_TRITON_SUCCESS
        && std::strcmp(plan.variant, "vq_gemm.d2.small") == 0);
    CHECK(planVqGemm(a, indices, codebook, bias, y, 8, 64, 64, 3, plan, why) == DIT_TRITON_INVALID_ARGUMENT
        && why.find("dim must be 4 or 2") != std::string::npos);
    CHECK(planVqGemm(a, nullptr, codebook, bias, y, 8, 64, 64, 2, plan, why) == DIT_TRITON_INVALID_ARGUMENT
        && why.find("indices is NULL") != std::string::npos);

    void* const codes = reinterpret_cast<void*>(0xa000);
    float* const scale = reinterpret_cast<float*>(0xb000);
    auto const table = floats(0xc000);
    auto const bucket = static_cast<int64_t const*>(address(0xd000));
    CHECK(planQuantizeRows(a, codes, scale, nullptr, nullptr, nullptr, 77, 1152, 0, DIT_TRITON_QUANT_INT8, plan, why)
            == DIT_TRITON_SUCCESS
        && std::strcmp(plan.variant, "quantize.int8.dynamic") == 0
        && names(plan) == "x_ptr,codes_ptr,scale_ptr,table_ptr,bucket_ptr,groups_ptr,K,rows_per_sample,table_row"
        && plan.params[3].address == 0xb000 && plan.params[4].address == 0xb000 && plan.params[5].address == 0xb000
        && plan.params[7].value == 1 && plan.params[8].value == 1 && plan.rows == 77);
    CHECK(planQuantizeRows(a, codes, scale, table, bucket, nullptr, 512, 1152, 2, DIT_TRITON_QUANT_FP8, plan, why)
            == DIT_TRITON_SUCCESS
        && std::strcmp(plan.variant, "quantize.fp8.static") == 0 && plan.params[3].address == 0xc000
        && plan.params[4].address == 0xd000 && plan.params[6].value == 1152 && plan.params[7].value == 256);
    auto const groups = static_cast<uint8_t const*>(address(0xe000));
    CHECK(planQuantizeRows(a, codes, scale, table, bucket, groups, 512, 1152, 2, DIT_TRITON_QUANT_INT4, plan, why)
            == DIT_TRITON_SUCCESS
        && std::strcmp(plan.variant, "quantize.int4.static") == 0 && plan.params[5].address == 0xe000
        && plan.params[7].value == 256);
    CHECK(planQuantizeRows(a, codes, scale, table, bucket, nullptr, 512, 1152, 2, DIT_TRITON_QUANT_INT4, plan, why)
            == DIT_TRITON_INVALID_ARGUMENT
        && why.find("static only") != std::string::npos);
    CHECK(planQuantizeRows(a, codes, scale, nullptr, nullptr, groups, 4, 64, 0, DIT_TRITON_QUANT_INT4, plan, why)
        == DIT_TRITON_INVALID_ARGUMENT);
    CHECK(planQuantizeRows(a, codes, scale, table, bucket, groups, 4, 48, 2, DIT_TRITON_QUANT_INT4, plan, why)
            == DIT_TRITON_INVALID_ARGUMENT
        && why.find("groups of 32") != std::string::npos);
    CHECK(planQuantizeRows(a, codes, scale, table, bucket, groups, 4, 64, 2, DIT_TRITON_QUANT_INT8, plan, why)
            == DIT_TRITON_INVALID_ARGUMENT
        && why.find("INT4 only") != std::string::npos);
    CHECK(planQuantizeRows(a, codes, scale, nullptr, nullptr, nullptr, 4, 64, 0, DIT_TRITON_QUANT_FP4, plan, why)
            == DIT_TRITON_SUCCESS
        && std::strcmp(plan.variant, "quantize.fp4.dynamic") == 0);
    CHECK(planQuantizeRows(a, codes, scale, nullptr, nullptr, nullptr, 4, 48, 0, DIT_TRITON_QUANT_FP4, plan, why)
            == DIT_TRITON_INVALID_ARGUMENT
        && why.find("groups of 32") != std::string::npos);
    CHECK(planQuantizeRows(a, codes, scale, table, bucket, nullptr, 4, 64, 2, DIT_TRITON_QUANT_FP4, plan, why)
            == DIT_TRITON_INVALID_ARGUMENT
        && why.find("dynamic only") != std::string::npos);
    CHECK(planQuantizeRows(a, codes, scale, nullptr, nullptr, nullptr, 4, 64, 0, DIT_TRITON_QUANT_FP4_HADAMARD, plan,
              why)
            == DIT_TRITON_SUCCESS
        && std::strcmp(plan.variant, "quantize.fp4_hadamard.dynamic") == 0);
    CHECK(planQuantizeRows(a, codes, scale, nullptr, nullptr, nullptr, 4, 48, 0, DIT_TRITON_QUANT_FP4_HADAMARD, plan,
              why)
            == DIT_TRITON_INVALID_ARGUMENT
        && why.find("groups of 32") != std::string::npos);
    CHECK(planQuantizeRows(a, codes, scale, table, bucket, nullptr, 4, 64, 2, DIT_TRITON_QUANT_FP4_HADAMARD, plan,
              why)
            == DIT_TRITON_INVALID_ARGUMENT
        && why.find("dynamic only") != std::string::npos);
    CHECK(planQuantizeRows(a, codes, scale, nullptr, nullptr, nullptr, 4, 64, 0, 5, plan, why)
            == DIT_TRITON_INVALID_ARGUMENT
        && why.find("_FP4_HADAMARD") != std::string::npos);
    CHECK(planQuantizeRows(a, codes, scale, table, bucket, nullptr, 5, 64, 2, DIT_TRITON_QUANT_INT8, plan, why)
            == DIT_TRITON_INVALID_ARGUMENT
        && why.find("multiple of samples") != std::string::npos);
    CHECK(planQuantizeRows(a, codes, scale, table, nullptr, nullptr, 4, 64, 2, DIT_TRITON_QUANT_INT8, plan, why)
        == DIT_TRITON_INVALID_ARGUMENT);
    CHECK(planQuantizeRows(a, codes, scale, nullptr, nullptr, nullptr, 4, 40, 0, DIT_TRITON_QUANT_INT8, plan, why)
        == DIT_TRITON_INVALID_ARGUMENT);
    CHECK(planQuantizeRows(a, codes, scale, nullptr, nullptr, nullptr, 4, 64, 0, -1, plan, why)
        == DIT_TRITON_INVALID_ARGUMENT);
    CHECK(planQuantizeRows(
              nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 64, 0, DIT_TRITON_QUANT_INT8, plan, why)
            == DIT_TRITON_SUCCESS
        && plan.empty());
}

void checkPlanChecks()
{
    LaunchPlan plan;
    std::string why;
    uint32_t grid = 0;
    auto const p = address(0x1000);
    auto const f = floats(0x1000);
    void* const y = reinterpret_cast<void*>(0x1000);
    KernelImage gemm{"int8_gemm.w4.large", "int8", 90, true, false, "int8_gemm_kernel", 8, 98304, 128, 128, 128,
        "a_ptr,a_scale_ptr,w_ptr,factor_ptr,w_scale_ptr,bias_ptr,y_ptr,M,N,K", kBytes, 1};
    CHECK(planInt8Gemm(p, f, p, bytes(0x1000), f, f, y, 300, 1152, 1152, 4, DIT_TRITON_ACT_INT8, plan, why)
        == DIT_TRITON_SUCCESS);
    CHECK_WHY(checkPlan(gemm, plan, grid, why) == DIT_TRITON_SUCCESS && grid == 3 * 9, why);
    CHECK(planInt8Gemm(p, f, p, bytes(0x1000), f, f, y, 300, 1152, 1216, 4, DIT_TRITON_ACT_INT8, plan, why)
        == DIT_TRITON_SUCCESS);
    CHECK(checkPlan(gemm, plan, grid, why) == DIT_TRITON_INVALID_ARGUMENT
        && why.find("multiple of the kernel's K step 128") != std::string::npos);

    KernelImage renamed = gemm;
    renamed.arguments = "a_ptr,a_scale_ptr,w_ptr,factor_ptr,w_scale_ptr,bias_ptr,y_ptr,M,N";
    CHECK(planInt8Gemm(p, f, p, bytes(0x1000), f, f, y, 300, 1152, 1152, 4, DIT_TRITON_ACT_INT8, plan, why)
        == DIT_TRITON_SUCCESS);
    CHECK(!argumentsMatch(renamed, plan, why) && why.find("rebuild the library") != std::string::npos);
    CHECK(argumentsMatch(gemm, plan, why));

    KernelImage quantize{"quantize.int8.dynamic", "quantize", 80, false, false, "quantize_rows_kernel", 4, 16, 0, 0, 0,
        "x_ptr,codes_ptr,scale_ptr,table_ptr,bucket_ptr,groups_ptr,K,rows_per_sample,table_row", kBytes, 1};
    CHECK(planQuantizeRows(p, y, reinterpret_cast<float*>(0x1000), nullptr, nullptr, nullptr, 4097, 1152, 0,
              DIT_TRITON_QUANT_INT8, plan, why)
        == DIT_TRITON_SUCCESS);
    CHECK(checkPlan(quantize, plan, grid, why) == DIT_TRITON_SUCCESS && grid == 4097);

    KernelImage tiny = gemm;
    tiny.blockM = 1;
    tiny.blockN = 1;
    tiny.blockK = 16;
    CHECK(planInt8Gemm(p, f, p, nullptr, f, f, y, 1 << 20, 1 << 20, 16, 8, DIT_TRITON_ACT_INT8, plan, why)
        == DIT_TRITON_SUCCESS);
    CHECK(checkPlan(tiny, plan, grid, why) == DIT_TRITON_INVALID_ARGUMENT
        && why.find("grid limit") != std::string::npos);
}

int unitChecks()
{
    selectionChecks();
    int8Checks();
    otherPlanChecks();
    checkPlanChecks();
    if (failures != 0)
    {
        std::printf("%d of %d checks failed\n", failures, checks);
        return 1;
    }
    std::printf("ok %d\n", checks);
    return 0;
}

uint64_t fnv1a(unsigned char const* data, std::size_t size)
{
    uint64_t hash = 1469598103934665603ull;
    for (std::size_t i = 0; i < size; ++i)
    {
        hash = (hash ^ data[i]) * 1099511628211ull;
    }
    return hash;
}

int printTable()
{
    KernelTable const table = embeddedKernels();
    std::printf("triton %s\n", table.tritonVersion);
    for (std::size_t i = 0; i < table.count; ++i)
    {
        KernelImage const& m = table.images[i];
        std::printf("%s %s %d %d %d %s %d %d %d %d %d %s %zu %016" PRIx64 "\n", m.variant, m.family, m.arch,
            m.archSpecific ? 1 : 0, m.ptx ? 1 : 0, m.symbol, m.numWarps, m.sharedBytes, m.blockM, m.blockN, m.blockK,
            m.arguments, m.size, fnv1a(m.data, m.size));
    }
    return 0;
}

int printSelection(int major, int minor)
{
    KernelTable const table = embeddedKernels();
    std::set<std::string> seen;
    for (std::size_t i = 0; i < table.count; ++i)
    {
        if (!seen.insert(table.images[i].variant).second)
        {
            continue;
        }
        std::string why;
        std::printf("%s %s\n", table.images[i].variant,
            describe(selectImage(table, table.images[i].variant, major, minor, why)).c_str());
    }
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc == 1)
    {
        return unitChecks();
    }
    if (argc == 2 && std::strcmp(argv[1], "table") == 0)
    {
        return printTable();
    }
    if (argc == 4 && std::strcmp(argv[1], "select") == 0)
    {
        return printSelection(std::atoi(argv[2]), std::atoi(argv[3]));
    }
    std::fprintf(stderr, "usage: %s [table | select MAJOR MINOR]\n", argv[0]);
    return 2;
}
