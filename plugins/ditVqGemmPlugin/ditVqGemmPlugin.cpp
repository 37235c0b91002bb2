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
    int64_t const perRow = (f.in_features + f.codeword_dim - 1) / f.codeword_dim;
    int64_t const indices = static_cast<int64_t>(f.out_features) * perRow;
    if (!isShape(dims[in.assignments], {(indices + 7) / 8 * f.index_bits}))
    {
        return "assignments must be [ceil(out_features * ceil(in_features / codeword_dim) / 8) * index_bits]";
    }
    return "";
}

int32_t DitVqGemmSpec::run(Fields const& f, Inputs const& in, DitGemmIO& io, void const* const* inputs,
    cudaStream_t stream)
{
    DitVqWeights w{};
    w.codebook = inputs[in.codebook];
    w.assignments = static_cast<uint8_t const*>(inputs[in.assignments]);
    w.codewords = f.codewords;
    w.dim = f.codeword_dim;
    w.index_bits = f.index_bits;
    return ditVqGemm(&io, &w, stream);
}

} // namespace dit_export
