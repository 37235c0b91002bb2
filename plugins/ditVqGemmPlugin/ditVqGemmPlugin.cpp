#include "ditVqGemmPlugin.h"

namespace dit_export
{

std::string DitVqGemmSpec::checkShapes(Fields const& f, Inputs const& in, nvinfer1::Dims const* dims)
{
    std::string const common = checkCommonShapes(f, in, dims);
    if (!common.empty())
    {
        return common;
    }
    if (!isShape(dims[in.codebook], {f.codewords, f.codeword_dim}))
    {
        return "codebook must be [codewords, codeword_dim]";
    }
    if (!isShape(dims[in.indices], {f.out_features, f.in_features / f.codeword_dim}))
    {
        return "indices must be [out_features, in_features / codeword_dim]";
    }
    return "";
}

int32_t DitVqGemmSpec::run(Fields const& f, Inputs const& in, GemmLaunch const& launch)
{
    return ditTritonVqGemm(launch.x, static_cast<uint8_t const*>(launch.inputs[in.indices]), launch.inputs[in.codebook],
        launch.bias, launch.y, static_cast<int32_t>(launch.space.m), f.out_features, f.in_features, f.codeword_dim,
        launch.stream);
}

} // namespace dit_export
