#include "ditIntGemmPlugin.h"

namespace dit_export
{

std::string DitIntGemmSpec::checkShapes(Fields const& f, Inputs const& in, nvinfer1::Dims const* dims)
{
    std::string problem = checkCommonShapes(f, in, dims);
    if (problem.empty())
    {
        problem = checkScalarWeights(f, dims[in.weight], in.weight_factor >= 0 ? &dims[in.weight_factor] : nullptr,
            dims[in.weight_scale], "weight_factor");
    }
    if (problem.empty() && in.act_scale_table >= 0
        && (dims[in.act_scale_table].nbDims != 1 || dims[in.timestep_bucket].nbDims != 1))
    {
        problem = "act_scale_table must be [buckets] and timestep_bucket [B]";
    }
    if (problem.empty() && in.act_groups >= 0)
    {
        nvinfer1::Dims const& groups = dims[in.act_groups];
        if (groups.nbDims != 3 || groups.d[0] != dims[in.act_scale_table].d[0]
            || groups.d[1] != f.in_features / kInt4ActGroup || groups.d[2] != 2)
        {
            problem = "act_groups must be [buckets, in_features / " + std::to_string(kInt4ActGroup)
                + ", 2] with the buckets of act_scale_table";
        }
    }
    return problem;
}

int32_t DitIntGemmSpec::run(Fields const& f, Inputs const& in, GemmLaunch const& launch)
{
    void const* const w = launch.inputs[in.weight];
    auto const* factor = in.weight_factor >= 0 ? static_cast<uint8_t const*>(launch.inputs[in.weight_factor]) : nullptr;
    auto const* scale = static_cast<float const*>(launch.inputs[in.weight_scale]);
    auto const m = static_cast<int32_t>(launch.space.m);
    if (f.act_mode == ActMode::kNone)
    {
        return ditTritonInt8Gemm(launch.x, nullptr, w, factor, scale, launch.bias, launch.y, m, f.out_features,
            f.in_features, f.weight_bits, DIT_TRITON_ACT_FP16, launch.stream);
    }
    bool const isStatic = f.act_mode == ActMode::kStatic;
    void* const codes = launch.space.codes(launch.workspace);
    float* const rowScale = launch.space.scales(launch.workspace);
    int32_t const samples = isStatic ? static_cast<int32_t>(launch.inputDesc[in.timestep_bucket].dims.d[0]) : 1;
    bool const uint4 = f.act_format == ActFormat::kUint4;
    int32_t status = ditTritonQuantizeRows(launch.x, codes, rowScale,
        isStatic ? static_cast<float const*>(launch.inputs[in.act_scale_table]) : nullptr,
        isStatic ? static_cast<int64_t const*>(launch.inputs[in.timestep_bucket]) : nullptr,
        uint4 ? static_cast<uint8_t const*>(launch.inputs[in.act_groups]) : nullptr, m, f.in_features, samples,
        uint4 ? DIT_TRITON_QUANT_INT4 : DIT_TRITON_QUANT_INT8, launch.stream);
    if (status == DIT_TRITON_SUCCESS)
    {
        status = ditTritonInt8Gemm(codes, rowScale, w, factor, scale, launch.bias, launch.y, m, f.out_features,
            f.in_features, f.weight_bits, DIT_TRITON_ACT_INT8, launch.stream);
    }
    return status;
}

} // namespace dit_export
