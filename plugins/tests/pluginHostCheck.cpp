// Host check of the plugins against TensorRT's headers, without TensorRT's library or a GPU:
// each creator builds its plugin from contract fields, and the plugin states FLOAT16 in and out,
// its workspace, and fails (status -1, the reason logged) where the device or the driver is missing.
// tests/test_plugins.py runs it; it prints one line per check.
#include "ditFp4GemmPlugin/ditFp4GemmPlugin.h"
#include "ditIntGemmPlugin/ditIntGemmPlugin.h"
#include "ditVqGemmPlugin/ditVqGemmPlugin.h"

#include <cstdio>
#include <utility>
#include <vector>

namespace dit_export
{

std::string gLogged;

void logPluginError(std::string const& message) noexcept
{
    gLogged = "error: " + message;
}

void logPluginWarning(std::string const& message) noexcept
{
    gLogged = "warning: " + message;
}

} // namespace dit_export

using namespace dit_export;
using nvinfer1::DataType;

namespace
{

nvinfer1::DynamicPluginTensorDesc desc(DataType type, std::initializer_list<int64_t> dims)
{
    nvinfer1::DynamicPluginTensorDesc d{};
    d.desc.type = type;
    d.desc.format = nvinfer1::TensorFormat::kLINEAR;
    d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    int32_t i = 0;
    for (int64_t v : dims)
    {
        d.desc.dims.d[i] = v;
        d.max.d[i++] = v;
    }
    d.max.nbDims = d.desc.dims.nbDims;
    return d;
}

template <typename Creator>
nvinfer1::IPluginV3* create(Creator& creator, std::vector<nvinfer1::PluginField> const& fields)
{
    nvinfer1::PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    return creator.createPlugin("layer", &fc, nvinfer1::TensorRTPhase::kBUILD);
}

void report(char const* what, nvinfer1::IPluginV3* plugin, std::vector<nvinfer1::DynamicPluginTensorDesc> io)
{
    auto* build = static_cast<nvinfer1::IPluginV3OneBuild*>(plugin->getCapabilityInterface(
        nvinfer1::PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<nvinfer1::IPluginV3OneRuntime*>(plugin->getCapabilityInterface(
        nvinfer1::PluginCapabilityType::kRUNTIME));
    int32_t const inputs = static_cast<int32_t>(io.size()) - 1;
    std::vector<DataType> types;
    for (int32_t i = 0; i < inputs; ++i)
    {
        types.push_back(io[static_cast<size_t>(i)].desc.type);
    }
    DataType out{};
    build->getOutputDataTypes(&out, 1, types.data(), inputs);
    std::string formats;
    for (int32_t pos = 0; pos <= inputs; ++pos)
    {
        formats += build->supportsFormatCombination(pos, io.data(), inputs, 1) ? "1" : "0";
    }
    auto asFloat = io;
    asFloat[0].desc.type = DataType::kFLOAT;
    bool const fp32x = build->supportsFormatCombination(0, asFloat.data(), inputs, 1);
    gLogged.clear();
    int32_t const configured = build->configurePlugin(io.data(), inputs, &io.back(), 1);
    std::string const configureLog = gLogged;
    size_t const workspace = build->getWorkspaceSize(io.data(), inputs, &io.back(), 1);
    std::vector<nvinfer1::PluginTensorDesc> descs;
    std::vector<void const*> pointers;
    for (int32_t i = 0; i < inputs; ++i)
    {
        descs.push_back(io[static_cast<size_t>(i)].desc);
        pointers.push_back(reinterpret_cast<void const*>(uintptr_t{0x10000} * static_cast<uintptr_t>(i + 1)));
    }
    void* output = reinterpret_cast<void*>(0x100000);
    gLogged.clear();
    int32_t const enqueued = runtime->enqueue(descs.data(), &io.back().desc, pointers.data(), &output,
        reinterpret_cast<void*>(0x200000), nullptr);
    std::printf("%s|out=%d|formats=%s|fp32x=%d|configure=%d %s|workspace=%zu|enqueue=%d %s\n", what,
        static_cast<int>(out), formats.c_str(), fp32x ? 1 : 0, configured, configureLog.c_str(), workspace, enqueued,
        gLogged.c_str());
    delete plugin;
}

} // namespace

int main()
{
    int32_t const k = 256;
    int32_t const n = 64;
    int32_t const four = 4;
    int32_t const eight = 8;
    int32_t const one = 1;
    int32_t const words = 256;
    int32_t const dim = 4;
    using nvinfer1::PluginFieldType;
    DitIntGemmPluginCreator intCreator;
    auto* w4a8 = create(intCreator, {{"in_features", &k, PluginFieldType::kINT32, 1},
        {"out_features", &n, PluginFieldType::kINT32, 1}, {"weight_bits", &four, PluginFieldType::kINT32, 1},
        {"act_mode", "dynamic", PluginFieldType::kCHAR, 8}, {"act_format", "int8", PluginFieldType::kCHAR, 5},
        {"has_bias", &one, PluginFieldType::kINT32, 1}});
    report("int w4 dynamic", w4a8,
        {desc(DataType::kHALF, {2, 300, k}), desc(DataType::kINT8, {n, k / 2}), desc(DataType::kINT8, {n, k / 32}),
            desc(DataType::kFLOAT, {n}), desc(DataType::kFLOAT, {n}), desc(DataType::kHALF, {2, 300, n})});
    // Static UINT4 activations on two-level groups: act_groups [buckets, K / 32, 2] must match the table's buckets.
    auto const w4a4 = [&](int64_t groupBuckets) {
        return std::make_pair(create(intCreator, {{"in_features", &k, PluginFieldType::kINT32, 1},
                                  {"out_features", &n, PluginFieldType::kINT32, 1},
                                  {"weight_bits", &four, PluginFieldType::kINT32, 1},
                                  {"act_mode", "static", PluginFieldType::kCHAR, 7},
                                  {"act_format", "uint4", PluginFieldType::kCHAR, 6},
                                  {"has_bias", &one, PluginFieldType::kINT32, 1}}),
            std::vector<nvinfer1::DynamicPluginTensorDesc>{desc(DataType::kHALF, {2, 300, k}),
                desc(DataType::kINT8, {n, k / 2}), desc(DataType::kINT8, {n, k / 32}), desc(DataType::kFLOAT, {n}),
                desc(DataType::kFLOAT, {5}),
                desc(DataType::kINT8, {groupBuckets, k / 32, 2}), desc(DataType::kINT64, {2}),
                desc(DataType::kFLOAT, {n}), desc(DataType::kHALF, {2, 300, n})});
    };
    auto const [uint4, uint4Io] = w4a4(5);
    report("int w4 static uint4", uint4, uint4Io);
    auto const [badGroups, badGroupsIo] = w4a4(4);
    report("int w4 static uint4 bad groups", badGroups, badGroupsIo);
    auto* w8a16 = create(intCreator, {{"in_features", &k, PluginFieldType::kINT32, 1},
        {"out_features", &n, PluginFieldType::kINT32, 1}, {"weight_bits", &eight, PluginFieldType::kINT32, 1},
        {"act_mode", "none", PluginFieldType::kCHAR, 5}, {"act_format", "none", PluginFieldType::kCHAR, 5},
        {"has_bias", &one, PluginFieldType::kINT32, 1}});
    report("int w8 fp16", w8a16,
        {desc(DataType::kHALF, {2, k}), desc(DataType::kINT8, {n, k}), desc(DataType::kFLOAT, {n}),
            desc(DataType::kFLOAT, {n}), desc(DataType::kHALF, {2, n})});
    DitFp4GemmPluginCreator fp4Creator;
    auto* fp4 = create(fp4Creator, {{"in_features", &k, PluginFieldType::kINT32, 1},
        {"out_features", &n, PluginFieldType::kINT32, 1}, {"weight_bits", &four, PluginFieldType::kINT32, 1},
        {"weight_format", "e1m2", PluginFieldType::kCHAR, 5},
        {"act_mode", "dynamic", PluginFieldType::kCHAR, 8}, {"act_format", "fp4e2m1", PluginFieldType::kCHAR, 8},
        {"has_bias", &one, PluginFieldType::kINT32, 1}});
    report("fp4 w4 dynamic", fp4,
        {desc(DataType::kHALF, {8, k}), desc(DataType::kINT8, {n, k / 2}), desc(DataType::kINT8, {n, k / 32}),
            desc(DataType::kFLOAT, {n}), desc(DataType::kFLOAT, {n}), desc(DataType::kHALF, {8, n})});
    auto* fp4Hadamard = create(fp4Creator, {{"in_features", &k, PluginFieldType::kINT32, 1},
        {"out_features", &n, PluginFieldType::kINT32, 1}, {"weight_bits", &four, PluginFieldType::kINT32, 1},
        {"weight_format", "e2m1", PluginFieldType::kCHAR, 5},
        {"act_mode", "dynamic", PluginFieldType::kCHAR, 8},
        {"act_format", "fp4e2m1_hadamard", PluginFieldType::kCHAR, 17}, {"has_bias", &one, PluginFieldType::kINT32, 1}});
    report("fp4 w4 dynamic hadamard", fp4Hadamard,
        {desc(DataType::kHALF, {8, k}), desc(DataType::kINT8, {n, k / 2}), desc(DataType::kINT8, {n, k / 32}),
            desc(DataType::kFLOAT, {n}), desc(DataType::kFLOAT, {n}), desc(DataType::kHALF, {8, n})});
    DitVqGemmPluginCreator vqCreator;
    auto* vq = create(vqCreator, {{"in_features", &k, PluginFieldType::kINT32, 1},
        {"out_features", &n, PluginFieldType::kINT32, 1}, {"codewords", &words, PluginFieldType::kINT32, 1},
        {"codeword_dim", &dim, PluginFieldType::kINT32, 1}, {"has_bias", &one, PluginFieldType::kINT32, 1}});
    report("vq", vq,
        {desc(DataType::kHALF, {4, k}), desc(DataType::kINT8, {n, k / dim}), desc(DataType::kHALF, {words, dim}),
            desc(DataType::kFLOAT, {n}), desc(DataType::kHALF, {4, n})});
    gLogged.clear();
    int32_t const sixty = 64;
    auto* refused = create(intCreator, {{"in_features", &sixty, PluginFieldType::kINT32, 1},
        {"out_features", &n, PluginFieldType::kINT32, 1}, {"weight_bits", &four, PluginFieldType::kINT32, 1},
        {"act_mode", "dynamic", PluginFieldType::kCHAR, 8}, {"act_format", "int8", PluginFieldType::kCHAR, 5},
        {"has_bias", &one, PluginFieldType::kINT32, 1}});
    std::printf("refused|%d|%s\n", refused == nullptr ? 1 : 0, gLogged.c_str());
    return 0;
}
