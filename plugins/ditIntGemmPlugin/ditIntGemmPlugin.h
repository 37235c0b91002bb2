// DitIntGemm: integer weights (INT4 two per byte, or INT8) with group scales; activations as the
// contract's fields say. Contract: include/dit_export/plugin_contract.h.
#pragma once

#include "gemmPlugin.h"

namespace dit_export
{

struct DitIntGemmSpec
{
    using Info = DitIntGemmInfo;
    using Fields = DitIntGemmFields;
    using Inputs = DitIntGemmInputs;

    static std::string parse(FieldView const* entries, int32_t count, Fields& out)
    {
        std::string problem = parseDitIntGemmFields(entries, count, out);
        if (problem.empty() && out.weight_bits != 4 && out.weight_bits != 8)
        {
            problem = "DitIntGemm: weight_bits must be 4 or 8";
        }
        return problem;
    }
    static Inputs inputs(Fields const& f)
    {
        return ditIntGemmInputs(f);
    }
    template <typename Visitor>
    static void visit(Fields& f, Visitor&& v)
    {
        visitDitIntGemmFields(f, v);
    }
    static std::string checkShapes(Fields const& f, Inputs const& in, nvinfer1::Dims const* dims);
    static int32_t run(Fields const& f, Inputs const& in, DitGemmIO& io, void const* const* inputs,
        cudaStream_t stream);
};

using DitIntGemmPlugin = GemmPlugin<DitIntGemmSpec>;
using DitIntGemmPluginCreator = GemmPluginCreator<DitIntGemmSpec>;

} // namespace dit_export
