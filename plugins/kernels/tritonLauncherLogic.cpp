// Image selection and argument checks of the Triton kernel launcher: no GPU, no driver.
#include "tritonLauncherLogic.h"

#include "dit_export/plugin_contract.h"

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <utility>

namespace dit_export
{
namespace triton
{

namespace
{

// Pointers and the N and K arguments are compiled as multiples of 16 (variants.py: tt.divisibility).
constexpr int64_t kAlignment = 16;
constexpr int64_t kInt32Max = INT32_MAX;

std::string archName(KernelImage const& image)
{
    return std::string(image.ptx ? "PTX sm_" : "sm_") + std::to_string(image.arch) + (image.archSpecific ? "a" : "");
}

DitTritonStatus invalid(char const* function, std::string const& message, std::string& why)
{
    why = std::string(function) + ": " + message;
    return DIT_TRITON_INVALID_ARGUMENT;
}

// Every pointer non-NULL and 16-byte aligned (entries without a name are not used by the call).
DitTritonStatus checkPointers(char const* function, std::initializer_list<std::pair<char const*, void const*>> pointers,
    std::string& why)
{
    for (auto const& [name, pointer] : pointers)
    {
        if (name == nullptr)
        {
            continue;
        }
        if (pointer == nullptr)
        {
            return invalid(function, std::string(name) + " is NULL", why);
        }
        if (reinterpret_cast<uintptr_t>(pointer) % kAlignment != 0)
        {
            char address[32];
            std::snprintf(address, sizeof(address), "0x%" PRIxPTR, reinterpret_cast<uintptr_t>(pointer));
            return invalid(function,
                std::string(name) + " (" + address + ") is not 16-byte aligned: the kernels are compiled for 16-byte "
                                                       "aligned operands",
                why);
        }
    }
    return DIT_TRITON_SUCCESS;
}

DitTritonStatus checkGemmShape(char const* function, int32_t m, int32_t n, int32_t k, std::string& why)
{
    if (m < 0 || n < 0)
    {
        return invalid(function, "M = " + std::to_string(m) + " and N = " + std::to_string(n) + " must not be negative",
            why);
    }
    if (k <= 0 || k % kAlignment != 0)
    {
        return invalid(function, "K = " + std::to_string(k) + " must be a positive multiple of 16", why);
    }
    if (n % kAlignment != 0)
    {
        return invalid(function, "N = " + std::to_string(n) + " must be a multiple of 16", why);
    }
    if (static_cast<int64_t>(m) * k > kInt32Max || static_cast<int64_t>(n) * k > kInt32Max)
    {
        return invalid(function,
            "M * K and N * K must stay below 2^31 (the kernels index rows in int32); M = " + std::to_string(m)
                + ", N = " + std::to_string(n) + ", K = " + std::to_string(k),
            why);
    }
    return DIT_TRITON_SUCCESS;
}

void gemmSizes(LaunchPlan& plan, int32_t m, int32_t n, int32_t k)
{
    plan.int32("M", m);
    plan.int32("N", n);
    plan.int32("K", k);
}

void setShape(LaunchPlan& plan, int32_t m, int32_t n, int32_t k)
{
    plan.rows = m;
    plan.cols = n;
    plan.k = k;
}

// The embedded table's own copy of a variant's name (the plan keeps the pointer), or nullptr.
char const* embeddedVariant(std::string const& name)
{
    KernelTable const table = embeddedKernels();
    for (std::size_t i = 0; i < table.count; ++i)
    {
        if (name == table.images[i].variant)
        {
            return table.images[i].variant;
        }
    }
    return nullptr;
}

// "<prefix>.large" for more rows than the table's largeTilesAbove (variants.py's tiles), else
// "<prefix>.small".
char const* tiledVariant(std::string const& prefix, int32_t m)
{
    return embeddedVariant(prefix + (m > embeddedKernels().largeTilesAbove ? ".large" : ".small"));
}

DitTritonStatus checkVariant(char const* function, LaunchPlan const& plan, std::string& why)
{
    if (plan.variant == nullptr)
    {
        why = std::string(function) + ": the embedded kernels lack the variant this call needs";
        return DIT_TRITON_INTERNAL_ERROR;
    }
    return DIT_TRITON_SUCCESS;
}

} // namespace

void LaunchPlan::pointer(char const* name, void const* address)
{
    if (count < kMaxParams)
    {
        params[count++] = Param{name, true, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(address)), 0};
    }
}

void LaunchPlan::int32(char const* name, int32_t value)
{
    if (count < kMaxParams)
    {
        params[count++] = Param{name, false, 0, value};
    }
}

bool imageRunsOn(KernelImage const& image, int major, int minor)
{
    int const device = major * 10 + minor;
    if (image.archSpecific)
    {
        return device == image.arch;
    }
    if (image.ptx)
    {
        return device >= image.arch;
    }
    return major == image.arch / 10 && minor >= image.arch % 10;
}

KernelImage const* selectImage(KernelTable const& table, char const* variant, int major, int minor, std::string& why)
{
    KernelImage const* cubin = nullptr;
    KernelImage const* ptx = nullptr;
    std::string built;
    for (std::size_t i = 0; i < table.count; ++i)
    {
        KernelImage const& image = table.images[i];
        if (variant == nullptr || std::strcmp(image.variant, variant) != 0)
        {
            continue;
        }
        built += (built.empty() ? "" : ", ") + archName(image);
        if (!imageRunsOn(image, major, minor))
        {
            continue;
        }
        if (image.ptx)
        {
            ptx = ptx == nullptr || image.arch > ptx->arch ? &image : ptx;
        }
        else
        {
            cubin = cubin == nullptr || image.arch > cubin->arch ? &image : cubin;
        }
    }
    if (cubin != nullptr || ptx != nullptr)
    {
        return cubin != nullptr ? cubin : ptx;
    }
    std::string const device = std::to_string(major) + "." + std::to_string(minor);
    why = built.empty() ? std::string("the library has no kernel ") + (variant ? variant : "(null)")
            + " (built without its targets?)"
                        : std::string("no image of ") + variant + " runs on compute capability " + device
            + "; the library has " + built + " (a PTX runs on its target and newer GPUs)";
    return nullptr;
}

DitTritonStatus planInt8Gemm(void const* a, float const* aScale, void const* w, uint8_t const* factor,
    float const* wScale, float const* bias, void* y, int32_t m, int32_t n, int32_t k, int32_t weightBits,
    int32_t activation, LaunchPlan& plan, std::string& why)
{
    static char const* const kFunction = "ditTritonInt8Gemm";
    plan = LaunchPlan{};
    if (weightBits != 8 && weightBits != 4)
    {
        return invalid(kFunction, "weightBits must be 8 or 4, not " + std::to_string(weightBits), why);
    }
    if (activation != DIT_TRITON_ACT_INT8 && activation != DIT_TRITON_ACT_FP16)
    {
        return invalid(kFunction, "activation must be DIT_TRITON_ACT_INT8 or DIT_TRITON_ACT_FP16", why);
    }
    if (DitTritonStatus const status = checkGemmShape(kFunction, m, n, k, why))
    {
        return status;
    }
    bool const fp16 = activation == DIT_TRITON_ACT_FP16;
    std::string const weights = weightBits == 8 ? "int8_gemm.w8" : "int8_gemm.w4";
    plan.variant = fp16 ? embeddedVariant(weights + ".a16.small") : tiledVariant(weights, m);
    setShape(plan, m, n, k);
    if (DitTritonStatus const status = checkVariant(kFunction, plan, why))
    {
        return status;
    }
    plan.kStepDividesK = weightBits == 4;
    if (plan.empty())
    {
        return DIT_TRITON_SUCCESS;
    }
    if (fp16 && aScale != nullptr)
    {
        return invalid(kFunction, "aScale must be NULL with float16 activations", why);
    }
    if (weightBits == 8 && factor != nullptr)
    {
        return invalid(kFunction, "factor must be NULL with 8-bit weights", why);
    }
    if (DitTritonStatus const status = checkPointers(kFunction,
            {{"a", a}, {fp16 ? nullptr : "aScale", aScale}, {"w", w}, {weightBits == 4 ? "factor" : nullptr, factor},
                {"wScale", wScale}, {"bias", bias}, {"y", y}},
            why))
    {
        return status;
    }
    // Unused operands get a valid pointer of the same alignment, as the Python wrapper passes.
    plan.pointer("a_ptr", a);
    plan.pointer("a_scale_ptr", fp16 ? wScale : aScale);
    plan.pointer("w_ptr", w);
    plan.pointer("factor_ptr", weightBits == 4 ? static_cast<void const*>(factor) : wScale);
    plan.pointer("w_scale_ptr", wScale);
    plan.pointer("bias_ptr", bias);
    plan.pointer("y_ptr", y);
    gemmSizes(plan, m, n, k);
    return DIT_TRITON_SUCCESS;
}

DitTritonStatus planFp8Gemm(void const* a, float const* aScale, void const* w, uint8_t const* offset,
    float const* wScale, float const* bias, void* y, int32_t m, int32_t n, int32_t k, int32_t weightBits,
    int32_t fp4Format, LaunchPlan& plan, std::string& why)
{
    static char const* const kFunction = "ditTritonFp8Gemm";
    static char const* const kFp4Formats[] = DIT_TRITON_FP4_NAMES;
    plan = LaunchPlan{};
    bool const fp16 = aScale == nullptr;  // float16 activations: int8_gemm's FP16 path on E4M3 weights
    if (weightBits != 8 && weightBits != 4)
    {
        return invalid(kFunction, "weightBits must be 8 (E4M3) or 4 (FP4), not " + std::to_string(weightBits), why);
    }
    if (weightBits == 4 && (fp4Format < 0 || fp4Format >= DIT_TRITON_FP4_COUNT))
    {
        return invalid(kFunction, "fp4Format must be a DitTritonFp4Format (0 E2M1, 1 E3M0, 2 E1M2), not "
                + std::to_string(fp4Format), why);
    }
    if (fp16 && weightBits != 8)
    {
        return invalid(kFunction, "float16 activations (aScale NULL) take E4M3 weights (weightBits 8)", why);
    }
    if (DitTritonStatus const status = checkGemmShape(kFunction, m, n, k, why))
    {
        return status;
    }
    plan.variant = fp16 ? embeddedVariant("fp8_gemm.w8.a16.small")
                        : tiledVariant(weightBits == 8 ? std::string("fp8_gemm.w8")
                                                       : std::string("fp8_gemm.fp4.") + kFp4Formats[fp4Format], m);
    setShape(plan, m, n, k);
    if (DitTritonStatus const status = checkVariant(kFunction, plan, why))
    {
        return status;
    }
    plan.kStepDividesK = weightBits == 4;
    if (plan.empty())
    {
        return DIT_TRITON_SUCCESS;
    }
    if (weightBits == 8 && offset != nullptr)
    {
        return invalid(kFunction, "offset must be NULL with E4M3 weights", why);
    }
    if (DitTritonStatus const status = checkPointers(kFunction,
            {{"a", a}, {fp16 ? nullptr : "aScale", aScale}, {"w", w}, {weightBits == 4 ? "offset" : nullptr, offset},
                {"wScale", wScale}, {"bias", bias}, {"y", y}},
            why))
    {
        return status;
    }
    plan.pointer("a_ptr", a);
    plan.pointer("a_scale_ptr", fp16 ? wScale : aScale);  // unused with float16 activations
    plan.pointer("w_ptr", w);
    plan.pointer(fp16 ? "factor_ptr" : "offset_ptr", weightBits == 4 ? static_cast<void const*>(offset) : wScale);
    plan.pointer("w_scale_ptr", wScale);
    plan.pointer("bias_ptr", bias);
    plan.pointer("y_ptr", y);
    gemmSizes(plan, m, n, k);
    return DIT_TRITON_SUCCESS;
}

DitTritonStatus planVqGemm(void const* a, uint8_t const* indices, void const* codebook, float const* bias, void* y,
    int32_t m, int32_t n, int32_t k, int32_t dim, LaunchPlan& plan, std::string& why)
{
    static char const* const kFunction = "ditTritonVqGemm";
    plan = LaunchPlan{};
    if (dim != 4 && dim != 2)
    {
        return invalid(kFunction, "dim must be 4 or 2, not " + std::to_string(dim), why);
    }
    if (DitTritonStatus const status = checkGemmShape(kFunction, m, n, k, why))
    {
        return status;
    }
    plan.variant = tiledVariant(dim == 4 ? "vq_gemm.d4" : "vq_gemm.d2", m);
    setShape(plan, m, n, k);
    if (DitTritonStatus const status = checkVariant(kFunction, plan, why))
    {
        return status;
    }
    if (plan.empty())
    {
        return DIT_TRITON_SUCCESS;
    }
    if (DitTritonStatus const status = checkPointers(kFunction,
            {{"a", a}, {"indices", indices}, {"codebook", codebook}, {"bias", bias}, {"y", y}}, why))
    {
        return status;
    }
    plan.pointer("a_ptr", a);
    plan.pointer("a_scale_ptr", codebook);  // unused: the variants take float16 activations
    plan.pointer("index_ptr", indices);
    plan.pointer("codebook_ptr", codebook);
    plan.pointer("bias_ptr", bias);
    plan.pointer("y_ptr", y);
    gemmSizes(plan, m, n, k);
    return DIT_TRITON_SUCCESS;
}

DitTritonStatus planQuantizeRows(void const* x, void* codes, float* scale, float const* table, int64_t const* bucket,
    uint8_t const* groups, int32_t m, int32_t k, int32_t samples, int32_t format, LaunchPlan& plan, std::string& why)
{
    static char const* const kFunction = "ditTritonQuantizeRows";
    plan = LaunchPlan{};
    bool const isStatic = table != nullptr;
    if (format < 0 || format >= DIT_TRITON_QUANT_COUNT)
    {
        return invalid(kFunction,
            "format must be DIT_TRITON_QUANT_INT8, _FP8, _FP4, _INT4 or _FP4_HADAMARD, not " + std::to_string(format),
            why);
    }
    bool const fp4 = format == DIT_TRITON_QUANT_FP4 || format == DIT_TRITON_QUANT_FP4_HADAMARD;
    if (m < 0 || k <= 0 || k % kAlignment != 0)
    {
        return invalid(kFunction,
            "M = " + std::to_string(m) + " must not be negative and K = " + std::to_string(k)
                + " must be a positive multiple of 16",
            why);
    }
    // The quantizers' groups of channels (exporter/numerics/kernel_layout.py, generated into the contract header).
    int32_t const group = fp4     ? dit_export::kFp4ActGroup
        : format == DIT_TRITON_QUANT_INT4 ? dit_export::kInt4ActGroup
                                          : 1;
    if (k % group != 0)
    {
        return invalid(kFunction,
            "the quantizer's groups of " + std::to_string(group) + " channels must divide K = " + std::to_string(k),
            why);
    }
    if (isStatic != (bucket != nullptr))
    {
        return invalid(kFunction, "static scales need both table and bucket; dynamic ones neither", why);
    }
    if (isStatic && fp4)
    {
        return invalid(kFunction, "FP4 scales are dynamic only: table and bucket must be NULL", why);
    }
    if (format == DIT_TRITON_QUANT_INT4 && (!isStatic || groups == nullptr))
    {
        return invalid(kFunction, "INT4 scales are static only: table, bucket and groups must all be given", why);
    }
    if (format != DIT_TRITON_QUANT_INT4 && groups != nullptr)
    {
        return invalid(kFunction, "groups is for INT4 only: it must be NULL", why);
    }
    if (isStatic && (samples <= 0 || m % samples != 0))
    {
        return invalid(kFunction,
            "static scales need M = " + std::to_string(m) + " to be a multiple of samples = " + std::to_string(samples),
            why);
    }
    static char const* const kVariants[DIT_TRITON_QUANT_COUNT][2] = DIT_TRITON_QUANT_VARIANTS;
    plan.variant = kVariants[format][isStatic ? 1 : 0];
    plan.rows = m;
    plan.cols = 1;
    plan.k = k;
    if (plan.empty())
    {
        return DIT_TRITON_SUCCESS;
    }
    bool const hasGroups = format == DIT_TRITON_QUANT_INT4;
    if (DitTritonStatus const status = checkPointers(kFunction,
            {{"x", x}, {"codes", codes}, {"scale", scale}, {isStatic ? "table" : nullptr, table},
                {isStatic ? "bucket" : nullptr, bucket}, {hasGroups ? "groups" : nullptr, groups}},
            why))
    {
        return status;
    }
    plan.pointer("x_ptr", x);
    plan.pointer("codes_ptr", codes);
    plan.pointer("scale_ptr", scale);
    plan.pointer("table_ptr", isStatic ? static_cast<void const*>(table) : scale);  // unused when dynamic
    plan.pointer("bucket_ptr", isStatic ? static_cast<void const*>(bucket) : scale);
    plan.pointer("groups_ptr", hasGroups ? static_cast<void const*>(groups) : scale);  // unused but for INT4
    plan.int32("K", k);
    plan.int32("rows_per_sample", isStatic ? m / samples : 1);
    plan.int32("table_row", 1);  // the table is one scale per bucket
    return DIT_TRITON_SUCCESS;
}

bool argumentsMatch(KernelImage const& image, LaunchPlan const& plan, std::string& why)
{
    std::string expected;
    for (int i = 0; i < plan.count; ++i)
    {
        expected += (i ? "," : "") + std::string(plan.params[i].name);
    }
    if (image.arguments != nullptr && expected == image.arguments)
    {
        return true;
    }
    why = std::string("the embedded kernel ") + image.variant + " takes (" + (image.arguments ? image.arguments : "")
        + ") but the launcher passes (" + expected + "): rebuild the library from the same exporter/kernels";
    return false;
}

DitTritonStatus checkPlan(KernelImage const& image, LaunchPlan const& plan, uint32_t& grid, std::string& why)
{
    grid = 0;
    if (!argumentsMatch(image, plan, why))
    {
        return DIT_TRITON_INTERNAL_ERROR;
    }
    if (image.numWarps < 1 || image.numWarps > 32 || image.sharedBytes < 0 || (image.blockM > 0) != (image.blockN > 0))
    {
        why = std::string("the embedded kernel ") + image.variant + " has an impossible launch shape";
        return DIT_TRITON_INTERNAL_ERROR;
    }
    if (plan.kStepDividesK && (image.blockK <= 0 || plan.k % image.blockK != 0))
    {
        why = std::string(plan.variant) + ": 4-bit weights need K = " + std::to_string(plan.k)
            + " to be a multiple of the kernel's K step " + std::to_string(image.blockK);
        return DIT_TRITON_INVALID_ARGUMENT;
    }
    int64_t const programs = image.blockM > 0
        ? ((plan.rows + image.blockM - 1) / image.blockM) * ((plan.cols + image.blockN - 1) / image.blockN)
        : plan.rows;
    if (programs > kInt32Max)
    {
        why = std::string(plan.variant) + ": " + std::to_string(programs) + " programs exceed the grid limit 2^31 - 1";
        return DIT_TRITON_INVALID_ARGUMENT;
    }
    grid = static_cast<uint32_t>(programs);
    return DIT_TRITON_SUCCESS;
}

} // namespace triton
} // namespace dit_export
