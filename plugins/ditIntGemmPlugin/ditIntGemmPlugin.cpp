#include "ditIntGemmPlugin.h"

namespace dit_export
{

std::string DitIntGemmSpec::checkShapes(Fields const& f, Inputs const& in, nvinfer1::Dims const* dims)
{
    std::string const common = checkCommonShapes(f, in, dims);
    if (!common.empty())
    {
        return common;
    }
    int64_t const k = f.in_features;
    int64_t const n = f.out_features;
    if (f.weight_bits == 4 && n % 2)
    {
        return "4-bit weights need an even out_features";
    }
    if (!isShape(dims[in.weight], {k, n * f.weight_bits / 8}))
    {
        return "weight must be [in_features, out_features * weight_bits / 8]";
    }
    return checkGroupScale(f, dims[in.weight_scale]);
}

int32_t DitIntGemmSpec::run(Fields const& f, Inputs const& in, DitGemmIO& io, void const* const* inputs,
    cudaStream_t stream)
{
    DitScalarWeights w{};
    w.codes = static_cast<int8_t const*>(inputs[in.weight]);
    w.scale = static_cast<float const*>(inputs[in.weight_scale]);
    w.group_size = f.group_size;
    w.format = f.weight_bits == 4 ? DIT_WEIGHT_INT4 : DIT_WEIGHT_INT8;
    return ditScalarGemm(&io, &w, stream);
}

} // namespace dit_export
