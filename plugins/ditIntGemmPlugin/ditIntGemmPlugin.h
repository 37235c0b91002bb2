// DitIntGemm: INT8 weights, or INT4 codes with integer factors per 32 channels (two-level scales),
// with a float scale per output channel; INT8 activations with one scale per token (static per
// timestep bucket or dynamic) or FP16 ones. Runs int8_gemm. Contract: include/dit_export/plugin_contract.h.
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
        return parseDitIntGemmFields(entries, count, out);
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
    static bool quantized(Fields const& f)
    {
        return f.act_mode != ActMode::kNone;
    }
    static std::string checkShapes(Fields const& f, Inputs const& in, nvinfer1::Dims const* dims);
    static int32_t run(Fields const& f, Inputs const& in, GemmLaunch const& launch);
};

using DitIntGemmPlugin = GemmPlugin<DitIntGemmSpec>;
using DitIntGemmPluginCreator = GemmPluginCreator<DitIntGemmSpec>;

} // namespace dit_export
