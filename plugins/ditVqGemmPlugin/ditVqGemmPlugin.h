// DitVqGemm: codebook weights (FP16 codebook, one index byte per sub-vector) with FP16
// activations. Runs vq_gemm. Contract: include/dit_export/plugin_contract.h.
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
        return parseDitVqGemmFields(entries, count, out);
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
    static bool quantized(Fields const&)
    {
        return false;
    }
    static std::string checkShapes(Fields const& f, Inputs const& in, nvinfer1::Dims const* dims);
    static int32_t run(Fields const& f, Inputs const& in, GemmLaunch const& launch);
};

using DitVqGemmPlugin = GemmPlugin<DitVqGemmSpec>;
using DitVqGemmPluginCreator = GemmPluginCreator<DitVqGemmSpec>;

} // namespace dit_export
