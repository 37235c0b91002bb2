#include "ditFp4GemmPlugin.h"

namespace dit_export
{

namespace
{
static_assert(static_cast<int32_t>(WeightFormat::kE2m1) == DIT_TRITON_FP4_E2M1
        && static_cast<int32_t>(WeightFormat::kE3m0) == DIT_TRITON_FP4_E3M0
        && static_cast<int32_t>(WeightFormat::kE1m2) == DIT_TRITON_FP4_E1M2,
    "the contract's weight formats are the launcher's FP4 formats, in one order");

int32_t fp4Format(DitFp4GemmFields const& f)
{
    return static_cast<int32_t>(f.weight_format);
}

int32_t quantizeFormat(DitFp4GemmFields const& f)
{
    return f.act_format == ActFormat::kFp4e2m1Hadamard ? DIT_TRITON_QUANT_FP4_HADAMARD : DIT_TRITON_QUANT_FP4;
}
} // namespace

std::string DitFp4GemmSpec::checkShapes(Fields const& f, Inputs const& in, nvinfer1::Dims const* dims)
{
    std::string const common = checkCommonShapes(f, in, dims);
    if (!common.empty())
    {
        return common;
    }
    return checkScalarWeights(f, dims[in.weight], in.weight_offset >= 0 ? &dims[in.weight_offset] : nullptr,
        dims[in.weight_scale], "weight_offset");
}

int32_t DitFp4GemmSpec::run(Fields const& f, Inputs const& in, GemmLaunch const& launch)
{
    void const* const w = launch.inputs[in.weight];
    auto const* offset = in.weight_offset >= 0 ? static_cast<uint8_t const*>(launch.inputs[in.weight_offset]) : nullptr;
    auto const* scale = static_cast<float const*>(launch.inputs[in.weight_scale]);
    auto const m = static_cast<int32_t>(launch.space.m);
    if (f.act_mode == ActMode::kNone)  // FP16 activations: a NULL activation scale
    {
        return ditTritonFp8Gemm(launch.x, nullptr, w, offset, scale, launch.bias, launch.y, m, f.out_features,
            f.in_features, f.weight_bits, fp4Format(f), launch.stream);
    }
    void* const codes = launch.space.codes(launch.workspace);
    float* const rowScale = launch.space.scales(launch.workspace);
    int32_t status = ditTritonQuantizeRows(launch.x, codes, rowScale, nullptr, nullptr, nullptr, m, f.in_features, 1,
        quantizeFormat(f), launch.stream);
    if (status == DIT_TRITON_SUCCESS)
    {
        status = ditTritonFp8Gemm(codes, rowScale, w, offset, scale, launch.bias, launch.y, m, f.out_features,
            f.in_features, f.weight_bits, fp4Format(f), launch.stream);
    }
    return status;
}

} // namespace dit_export
