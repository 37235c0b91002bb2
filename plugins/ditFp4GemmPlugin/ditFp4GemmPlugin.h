// DitFp4Gemm: FP4 weights (E2M1, E3M0 or E1M2 codes, two per byte) with group scales;
// activations as the contract's fields say. Contract: include/dit_export/plugin_contract.h.
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
    static std::string checkShapes(Fields const& f, Inputs const& in, nvinfer1::Dims const* dims);
    static int32_t run(Fields const& f, Inputs const& in, DitGemmIO& io, void const* const* inputs,
        cudaStream_t stream);
};

using DitFp4GemmPlugin = GemmPlugin<DitFp4GemmSpec>;
using DitFp4GemmPluginCreator = GemmPluginCreator<DitFp4GemmSpec>;

} // namespace dit_export
