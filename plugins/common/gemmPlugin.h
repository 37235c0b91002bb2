// The TensorRT plumbing every dit-export GEMM plugin shares: an IPluginV3 (OneCore, OneBuild,
// OneRuntime) and its IPluginCreatorV3One, parameterised by a Spec that names the contract
// (include/dit_export/plugin_contract.h, generated) and adds what is particular to the plugin:
//
//   struct Spec {
//       using Info = ...Info; using Fields = ...Fields; using Inputs = ...Inputs;
//       static std::string parse(FieldView const*, int32_t, Fields&);          // from the contract
//       static Inputs inputs(Fields const&);                                   // from the contract
//       template <typename V> static void visit(Fields&, V&&);                 // from the contract
//       static std::string checkShapes(Fields const&, Inputs const&, nvinfer1::Dims const* dims);
//       static int32_t run(Fields const&, Inputs const&, DitGemmIO&, void const* const* inputs, cudaStream_t);
//   };
//
// No exception crosses into TensorRT: every noexcept method catches and logs.
#pragma once

#include "NvInferRuntime.h"
#include "dit_export/plugin_contract.h"
#include "ditKernels.h"

#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

namespace dit_export
{

void logPluginError(std::string const& message) noexcept;

inline DitGemmIO gemmIO(nvinfer1::Dims const& x, int32_t n, nvinfer1::DataType type)
{
    DitGemmIO io{};
    io.m = 1;
    for (int32_t d = 0; d + 1 < x.nbDims; ++d)
    {
        io.m *= x.d[d];
    }
    io.k = x.nbDims > 0 ? static_cast<int32_t>(x.d[x.nbDims - 1]) : 0;
    io.n = n;
    io.io_type = type == nvinfer1::DataType::kHALF ? DIT_FLOAT16 : DIT_FLOAT32;
    io.rows_per_sample = 1;
    return io;
}

// The activation fields of every GEMM contract, into the kernels' arguments.
template <typename Fields>
void setActivation(Fields const& f, DitGemmIO& io)
{
    io.act_mode = static_cast<int32_t>(f.act_mode);
    io.act_format = static_cast<int32_t>(f.act_format);
    io.act_group_size = f.act_group_size;
    io.rotation_block = f.rotation_block;
}

inline bool matches(PortType port, nvinfer1::DataType type, nvinfer1::DataType activation)
{
    switch (port)
    {
    case PortType::kActivation: return type == activation;
    case PortType::kInt8: return type == nvinfer1::DataType::kINT8;
    case PortType::kFloat32: return type == nvinfer1::DataType::kFLOAT;
    case PortType::kFloat16: return type == nvinfer1::DataType::kHALF;
    case PortType::kInt64: return type == nvinfer1::DataType::kINT64;
    }
    return false;
}

template <typename Spec>
class GemmPlugin : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime
{
public:
    using Fields = typename Spec::Fields;
    using Info = typename Spec::Info;

    explicit GemmPlugin(Fields const& fields)
        : mFields(fields)
        , mInputs(Spec::inputs(fields))
    {
    }

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override
    {
        if (type == nvinfer1::PluginCapabilityType::kBUILD)
        {
            return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        }
        if (type == nvinfer1::PluginCapabilityType::kRUNTIME)
        {
            return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        }
        return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    }

    nvinfer1::IPluginV3* clone() noexcept override
    {
        try
        {
            auto copy = std::make_unique<GemmPlugin>(mFields);
            copy->setPluginNamespace(mNamespace.c_str());
            return copy.release();
        }
        catch (std::exception const& e)
        {
            logPluginError(std::string(Info::kName) + ": " + e.what());
        }
        return nullptr;
    }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override
    {
        return Info::kName;
    }
    char const* getPluginVersion() const noexcept override
    {
        return Info::kVersion;
    }
    char const* getPluginNamespace() const noexcept override
    {
        return mNamespace.c_str();
    }
    void setPluginNamespace(char const* ns) noexcept
    {
        try
        {
            mNamespace = ns ? ns : "";
        }
        catch (std::exception const&)
        {
        }
    }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override
    {
        return 1;
    }

    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override
    {
        if (nbOutputs != 1 || nbInputs != mInputs.count)
        {
            return fail("expects " + std::to_string(mInputs.count) + " inputs and 1 output");
        }
        outputTypes[0] = inputTypes[mInputs.x];
        return 0;
    }

    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const*,
        int32_t, nvinfer1::DimsExprs* outputs, int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override
    {
        if (nbInputs != mInputs.count || nbOutputs != 1 || inputs[mInputs.x].nbDims < 2)
        {
            return fail("x must have at least 2 dimensions, [..., in_features]");
        }
        outputs[0] = inputs[mInputs.x];
        outputs[0].d[outputs[0].nbDims - 1] = exprBuilder.constant(mFields.out_features);
        return 0;
    }

    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override
    {
        if (nbInputs != mInputs.count || nbOutputs != 1 || pos < 0 || pos > nbInputs)
        {
            return false;
        }
        auto const& desc = inOut[pos].desc;
        if (desc.format != nvinfer1::TensorFormat::kLINEAR)
        {
            return false;
        }
        nvinfer1::DataType const activation = inOut[mInputs.x].desc.type;
        if (pos == nbInputs || pos == mInputs.x)
        {
            bool const floatType = desc.type == nvinfer1::DataType::kFLOAT || desc.type == nvinfer1::DataType::kHALF;
            return floatType && (pos == mInputs.x || desc.type == activation);
        }
        return matches(Info::kInputTypes[mInputs.port[pos]], desc.type, activation);
    }

    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept override
    {
        try
        {
            if (nbInputs != mInputs.count || nbOutputs != 1)
            {
                return fail("expects " + std::to_string(mInputs.count) + " inputs and 1 output");
            }
            std::vector<nvinfer1::Dims> dims(static_cast<size_t>(nbInputs));
            for (int32_t i = 0; i < nbInputs; ++i)
            {
                dims[static_cast<size_t>(i)] = in[i].desc.dims;
            }
            std::string const problem = Spec::checkShapes(mFields, mInputs, dims.data());
            return problem.empty() ? 0 : fail(problem);
        }
        catch (std::exception const& e)
        {
            return fail(e.what());
        }
    }

    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t,
        nvinfer1::DynamicPluginTensorDesc const*, int32_t) const noexcept override
    {
        DitGemmIO io = gemmIO(inputs[mInputs.x].max, mFields.out_features, inputs[mInputs.x].desc.type);
        setActivation(mFields, io);
        return ditGemmWorkspaceSize(&io);
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const*, int32_t, nvinfer1::PluginTensorDesc const*,
        int32_t) noexcept override
    {
        return 0;
    }

    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const*,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override
    {
        try
        {
            DitGemmIO io = gemmIO(inputDesc[mInputs.x].dims, mFields.out_features, inputDesc[mInputs.x].type);
            setActivation(mFields, io);
            io.x = inputs[mInputs.x];
            io.y = outputs[0];
            io.workspace = workspace;
            io.bias = mInputs.bias >= 0 ? static_cast<float const*>(inputs[mInputs.bias]) : nullptr;
            io.hadamard = mInputs.hadamard >= 0 ? static_cast<float const*>(inputs[mInputs.hadamard]) : nullptr;
            if (mInputs.act_scale_table >= 0)
            {
                io.act_scale_table = static_cast<float const*>(inputs[mInputs.act_scale_table]);
                io.act_zero_table = mInputs.act_zero_table >= 0
                    ? static_cast<int8_t const*>(inputs[mInputs.act_zero_table])
                    : nullptr;
                io.timestep_bucket = static_cast<int64_t const*>(inputs[mInputs.timestep_bucket]);
                int64_t const samples = inputDesc[mInputs.timestep_bucket].dims.d[0];
                io.rows_per_sample = samples > 0 ? io.m / samples : 1;
            }
            int32_t const status = Spec::run(mFields, mInputs, io, inputs, stream);
            return status ? fail(ditLastError()) : 0;
        }
        catch (std::exception const& e)
        {
            return fail(e.what());
        }
    }

    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override
    {
        return clone();
    }

    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        try
        {
            mSerialized.clear();
            mStrings.clear();
            mStrings.reserve(Info::kNbFields);  // the fields point into these strings
            Spec::visit(mFields, [this](char const* name, auto& value) {
                using Value = std::decay_t<decltype(value)>;
                if constexpr (std::is_same_v<Value, int32_t>)
                {
                    mSerialized.emplace_back(name, &value, nvinfer1::PluginFieldType::kINT32, 1);
                }
                else
                {
                    mStrings.emplace_back(toString(value));
                    mSerialized.emplace_back(name, mStrings.back().c_str(), nvinfer1::PluginFieldType::kCHAR,
                        static_cast<int32_t>(mStrings.back().size() + 1));
                }
            });
            mCollection.nbFields = static_cast<int32_t>(mSerialized.size());
            mCollection.fields = mSerialized.data();
            return &mCollection;
        }
        catch (std::exception const& e)
        {
            logPluginError(std::string(Info::kName) + ": " + e.what());
        }
        return nullptr;
    }

private:
    int32_t fail(std::string const& message) const noexcept
    {
        logPluginError(std::string(Info::kName) + ": " + message);
        return -1;
    }

    Fields mFields;
    typename Spec::Inputs mInputs;
    std::string mNamespace;
    std::vector<std::string> mStrings;
    std::vector<nvinfer1::PluginField> mSerialized;
    nvinfer1::PluginFieldCollection mCollection{};
};

template <typename Spec>
class GemmPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    using Info = typename Spec::Info;

    GemmPluginCreator()
    {
        for (int32_t i = 0; i < Info::kNbFields; ++i)
        {
            bool const text = Info::kFieldTypes[i] == FieldType::kChar;
            mFieldNames.emplace_back(Info::kFieldNames[i], nullptr,
                text ? nvinfer1::PluginFieldType::kCHAR : nvinfer1::PluginFieldType::kINT32, 1);
        }
        mCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
        mCollection.fields = mFieldNames.data();
    }

    char const* getPluginName() const noexcept override
    {
        return Info::kName;
    }
    char const* getPluginVersion() const noexcept override
    {
        return Info::kVersion;
    }
    char const* getPluginNamespace() const noexcept override
    {
        return Info::kNamespace;
    }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        return &mCollection;
    }

    // Also the deserialization path (phase kRUNTIME): malformed fields are refused, never trusted.
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase) noexcept override
    {
        try
        {
            if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr))
            {
                logPluginError(std::string(Info::kName) + ": no fields");
                return nullptr;
            }
            std::vector<FieldView> views;
            for (int32_t i = 0; i < fc->nbFields; ++i)
            {
                nvinfer1::PluginField const& f = fc->fields[i];
                if (f.name == nullptr || f.data == nullptr || f.length < 0)
                {
                    logPluginError(std::string(Info::kName) + ": malformed field");
                    return nullptr;
                }
                FieldType type = f.type == nvinfer1::PluginFieldType::kCHAR ? FieldType::kChar : FieldType::kInt32;
                if (f.type != nvinfer1::PluginFieldType::kCHAR && f.type != nvinfer1::PluginFieldType::kINT32)
                {
                    logPluginError(std::string(Info::kName) + ": field " + f.name + " has an unsupported type");
                    return nullptr;
                }
                views.push_back(FieldView{f.name, type, f.data, f.length});
            }
            typename Spec::Fields fields;
            std::string const problem = Spec::parse(views.data(), static_cast<int32_t>(views.size()), fields);
            if (!problem.empty())
            {
                logPluginError(std::string(name ? name : "") + ": " + problem);
                return nullptr;
            }
            auto plugin = std::make_unique<GemmPlugin<Spec>>(fields);
            plugin->setPluginNamespace(Info::kNamespace);
            return plugin.release();
        }
        catch (std::exception const& e)
        {
            logPluginError(std::string(Info::kName) + ": " + e.what());
        }
        return nullptr;
    }

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mCollection{};
};

// Shape checks shared by the plugins: x's last dimension, the optional inputs' shapes.
template <typename Fields, typename Inputs>
std::string checkCommonShapes(Fields const& f, Inputs const& in, nvinfer1::Dims const* dims)
{
    nvinfer1::Dims const& x = dims[in.x];
    if (x.nbDims < 2 || (x.d[x.nbDims - 1] >= 0 && x.d[x.nbDims - 1] != f.in_features))
    {
        return "x must be [..., " + std::to_string(f.in_features) + "]";
    }
    if (in.bias >= 0 && (dims[in.bias].nbDims != 1 || dims[in.bias].d[0] != f.out_features))
    {
        return "bias must be [" + std::to_string(f.out_features) + "]";
    }
    if (in.hadamard >= 0
        && (dims[in.hadamard].nbDims != 2 || dims[in.hadamard].d[0] != f.rotation_block
            || dims[in.hadamard].d[1] != f.rotation_block || f.in_features % f.rotation_block))
    {
        return "hadamard must be [rotation_block, rotation_block] with rotation_block dividing in_features";
    }
    if (f.act_group_size > 0 && f.in_features % f.act_group_size)
    {
        return "act_group_size must divide in_features";
    }
    if (in.act_scale_table >= 0)
    {
        nvinfer1::Dims const& table = dims[in.act_scale_table];
        int32_t const groups = f.act_group_size > 0 ? f.in_features / f.act_group_size : 1;
        bool const perGroup = f.act_group_size > 0 && f.act_group_size < f.in_features;
        if (dims[in.timestep_bucket].nbDims != 1 || table.nbDims != (perGroup ? 2 : 1)
            || (perGroup && table.d[1] != groups))
        {
            return "act_scale_table must be [buckets" + (perGroup ? ", " + std::to_string(groups) : std::string())
                + "] and timestep_bucket 1-D";
        }
        if (in.act_zero_table >= 0)
        {
            nvinfer1::Dims const& zeros = dims[in.act_zero_table];
            bool same = zeros.nbDims == table.nbDims;
            for (int32_t i = 0; same && i < table.nbDims; ++i)
            {
                same = zeros.d[i] == table.d[i];
            }
            if (!same)
            {
                return "act_zero_table must have the shape of act_scale_table";
            }
        }
    }
    return "";
}

// The group-scale input of scalar-code weights: [ceil(in_features / group_size), out_features].
template <typename Fields>
std::string checkGroupScale(Fields const& f, nvinfer1::Dims const& scale);

inline bool isShape(nvinfer1::Dims const& d, std::initializer_list<int64_t> expected)
{
    if (d.nbDims != static_cast<int32_t>(expected.size()))
    {
        return false;
    }
    int32_t i = 0;
    for (int64_t e : expected)
    {
        if (d.d[i++] != e)
        {
            return false;
        }
    }
    return true;
}

template <typename Fields>
std::string checkGroupScale(Fields const& f, nvinfer1::Dims const& scale)
{
    int64_t const groups = (f.in_features + f.group_size - 1) / f.group_size;
    return isShape(scale, {groups, f.out_features})
        ? ""
        : "weight_scale must be [ceil(in_features / group_size), out_features]";
}

} // namespace dit_export
