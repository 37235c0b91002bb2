// DitVqGemm: codebook weights (FP16 codebook, packed assignment bit stream); activations as the
// contract's fields say. Contract: include/dit_export/plugin_contract.h.
#pragma once

#include "gemmPlugin.h"

namespace dit_export
{

struct DitVqGemmSpec
{
    using Info = DitVqGemmInfo;
    using Fields = DitVqGemmFields;
    using Inputs = DitVqGemmInputs;

    static std::string parse(FieldView const* entries, int32_t count, Fields& out)
    {
        std::string problem = parseDitVqGemmFields(entries, count, out);
        if (problem.empty() && (out.index_bits > 16 || out.codewords > (1 << out.index_bits)))
        {
            problem = "DitVqGemm: index_bits must be 1 to 16 and address every codeword";
        }
        return problem;
    }
    static Inputs inputs(Fields const& f)
    {
        return ditVqGemmInputs(f);
    }
    template <typename Visitor>
    static void visit(Fields& f, Visitor&& v)
    {
        visitDitVqGemmFields(f, v);
    }
    static std::string checkShapes(Fields const& f, Inputs const& in, nvinfer1::Dims const* dims);
    static int32_t run(Fields const& f, Inputs const& in, DitGemmIO& io, void const* const* inputs,
        cudaStream_t stream);
};

using DitVqGemmPlugin = GemmPlugin<DitVqGemmSpec>;
using DitVqGemmPluginCreator = GemmPluginCreator<DitVqGemmSpec>;

} // namespace dit_export
