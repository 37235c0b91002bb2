// DitFp4Gemm: FP4 weights on power-of-two groups (E2M1 codes with exponent offsets per 32
// channels, or their E4M3 operands) with a float scale per output channel; FP4 activations on
// fine groups (dynamic; each group Hadamard-rotated first for act_format fp4e2m1_hadamard) or FP16 ones. Runs fp8_gemm (FP8 tensor cores: sm_89 or newer).
// Contract: include/dit_export/plugin_contract.h.
#pragma once

#include "gemmPlugin.h"

namespace dit_export
{

struct DitFp4GemmSpec
{
    using Info = DitFp4GemmInfo;
    using Fields = DitFp4GemmFields;
    using Inputs = DitFp4GemmInputs;

    static std::string parse(FieldView const* entries, int32_t count, Fields& out)
    {
        return parseDitFp4GemmFields(entries, count, out);
    }
    static Inputs inputs(Fields const& f)
    {
        return ditFp4GemmInputs(f);
    }
    template <typename Visitor>
    static void visit(Fields& f, Visitor&& v)
    {
        visitDitFp4GemmFields(f, v);
    }
    static bool quantized(Fields const& f)
    {
        return f.act_mode != ActMode::kNone;
    }
    static std::string checkShapes(Fields const& f, Inputs const& in, nvinfer1::Dims const* dims);
    static int32_t run(Fields const& f, Inputs const& in, GemmLaunch const& launch);
};

using DitFp4GemmPlugin = GemmPlugin<DitFp4GemmSpec>;
using DitFp4GemmPluginCreator = GemmPluginCreator<DitFp4GemmSpec>;

} // namespace dit_export
