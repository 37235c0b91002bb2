#include "ditFp4GemmPlugin.h"

namespace dit_export
{

std::string DitFp4GemmSpec::checkShapes(Fields const& f, Inputs const& in, nvinfer1::Dims const* dims)
{
    std::string const common = checkCommonShapes(f, in, dims);
    if (!common.empty())
    {
        return common;
    }
    int64_t const k = f.in_features;
    int64_t const n = f.out_features;
    if (n % 2 || !isShape(dims[in.weight], {k, n / 2}))
    {
        return "weight must be [in_features, out_features / 2] with an even out_features";
    }
    return checkGroupScale(f, dims[in.weight_scale]);
}

int32_t DitFp4GemmSpec::run(Fields const& f, Inputs const& in, DitGemmIO& io, void const* const* inputs,
    cudaStream_t stream)
{
    DitScalarWeights w{};
    w.codes = static_cast<int8_t const*>(inputs[in.weight]);
    w.scale = static_cast<float const*>(inputs[in.weight_scale]);
    w.group_size = f.group_size;
    w.format = DIT_WEIGHT_FP4E2M1 + static_cast<int32_t>(f.weight_format);  // e2m1, e3m0, e1m2 in both orders
    return ditScalarGemm(&io, &w, stream);
}

} // namespace dit_export
