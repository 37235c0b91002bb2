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
//       static bool quantized(Fields const&);       // whether x is quantized (needs the workspace)
//       static int32_t run(Fields const&, Inputs const&, GemmLaunch const&);   // a DitTritonStatus
//   };
//
// Every plugin runs the Triton kernels through their launcher (kernels/tritonLauncher.h): x and y
// are FLOAT16, quantized activations go through the plugin's workspace (ActivationWorkspace), and
// a launcher error becomes the enqueue's failure status with the launcher's message logged. No
// exception crosses into TensorRT: every noexcept method catches and logs.
#pragma once

#include "NvInferRuntime.h"
#include "dit_export/plugin_contract.h"
#include "tritonLauncher.h"

#include <cuda_runtime_api.h>

#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

namespace dit_export
{

void logPluginError(std::string const& message) noexcept;
void logPluginWarning(std::string const& message) noexcept;

// The workspace of a GEMM with quantized activations: each token's 8-bit codes [M, K] and its
// float32 scale [M], then the zero bias [N] the kernels read when the layer has none.
struct ActivationWorkspace
{
    static constexpr size_t kAlignment = 256;

    int64_t m;
    int32_t k;
    int32_t n;

    static size_t aligned(size_t bytes)
    {
        return (bytes + kAlignment - 1) / kAlignment * kAlignment;
    }
    size_t codesBytes() const
    {
        return aligned(static_cast<size_t>(m) * static_cast<size_t>(k));
    }
    size_t scalesBytes() const
    {
        return aligned(static_cast<size_t>(m) * sizeof(float));
    }
    size_t biasBytes() const
    {
        return aligned(static_cast<size_t>(n) * sizeof(float));
    }
    size_t bytes(bool quantized) const
    {
        return (quantized ? codesBytes() + scalesBytes() : 0) + biasBytes();
    }
    void* codes(void* base) const
    {
        return base;
    }
    float* scales(void* base) const
    {
        return reinterpret_cast<float*>(static_cast<char*>(base) + codesBytes());
    }
    float* zeroBias(void* base, bool quantized) const
    {
        return reinterpret_cast<float*>(static_cast<char*>(base) + (quantized ? codesBytes() + scalesBytes() : 0));
    }
};

// One GEMM call as the plugins' enqueue sees it: FLOAT16 x [M, K] and y [M, N], the inputs in
// contract order, the bias (the layer's, or zeros in the workspace), the workspace and stream.
struct GemmLaunch
{
    nvinfer1::PluginTensorDesc const* inputDesc;
    void const* const* inputs;
    void const* x;
    void* y;
    float const* bias;
    void* workspace;
    ActivationWorkspace space;
    cudaStream_t stream;
};

inline int64_t rowsOf(nvinfer1::Dims const& x)
{
    int64_t m = 1;
    for (int32_t d = 0; d + 1 < x.nbDims; ++d)
    {
        m *= x.d[d];
    }
    return m;
}

inline nvinfer1::DataType dataTypeOf(PortType port)
{
    switch (port)
    {
    case PortType::kInt8: return nvinfer1::DataType::kINT8;
    case PortType::kFloat32: return nvinfer1::DataType::kFLOAT;
    case PortType::kFloat16: return nvinfer1::DataType::kHALF;
    case PortType::kInt64: return nvinfer1::DataType::kINT64;
    }
    return nvinfer1::DataType::kFLOAT;
}

// The current device's compute capability as major * 10 + minor, or -1 (and why) on failure.
inline int32_t deviceArch(std::string& why)
{
    int device = 0;
    int major = 0;
    int minor = 0;
    cudaError_t status = cudaGetDevice(&device);
    if (status == cudaSuccess)
    {
        status = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    }
    if (status == cudaSuccess)
    {
        status = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    }
    if (status != cudaSuccess)
    {
        why = std::string("cannot read the device's compute capability: ") + cudaGetErrorString(status);
        return -1;
    }
    return major * 10 + minor;
}

// Loads every kernel image for the current device once per process (the launcher also loads
// lazily, per CUDA context, so a failure here is only a warning).
inline void preloadKernels() noexcept
{
    static std::once_flag once;
    try
    {
        std::call_once(once, [] {
            if (ditTritonPreload() != DIT_TRITON_SUCCESS)
            {
                logPluginWarning(std::string("preloading the Triton kernels: ") + ditTritonLastError());
            }
        });
    }
    catch (std::exception const& e)
    {
        logPluginWarning(std::string("preloading the Triton kernels: ") + e.what());
    }
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

    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const*,
        int32_t nbInputs) const noexcept override
    {
        if (nbOutputs != 1 || nbInputs != mInputs.count)
        {
            return fail("expects " + std::to_string(mInputs.count) + " inputs and 1 output");
        }
        outputTypes[0] = dataTypeOf(Info::kOutputType);
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
        PortType const port = pos == nbInputs ? Info::kOutputType : Info::kInputTypes[mInputs.port[pos]];
        return desc.format == nvinfer1::TensorFormat::kLINEAR && desc.type == dataTypeOf(port);
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
            return problem.empty() ? checkDevice() : fail(problem);
        }
        catch (std::exception const& e)
        {
            return fail(e.what());
        }
    }

    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t,
        nvinfer1::DynamicPluginTensorDesc const*, int32_t) const noexcept override
    {
        return space(inputs[mInputs.x].max).bytes(quantized());
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const*, int32_t, nvinfer1::PluginTensorDesc const*,
        int32_t) noexcept override
    {
        return checkDevice();
    }

    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const*,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override
    {
        try
        {
            GemmLaunch launch{inputDesc, inputs, inputs[mInputs.x], outputs[0], nullptr, workspace,
                space(inputDesc[mInputs.x].dims), stream};
            if (mFields.has_bias)
            {
                launch.bias = static_cast<float const*>(inputs[mInputs.bias]);
            }
            else
            {
                float* zeros = launch.space.zeroBias(workspace, quantized());
                size_t const bytes = static_cast<size_t>(mFields.out_features) * sizeof(float);
                if (cudaError_t const status = cudaMemsetAsync(zeros, 0, bytes, stream))
                {
                    return fail(std::string("zeroing the bias: ") + cudaGetErrorString(status));
                }
                launch.bias = zeros;
            }
            int32_t const status = Spec::run(mFields, mInputs, launch);
            return status == DIT_TRITON_SUCCESS ? 0 : fail(ditTritonLastError());
        }
        catch (std::exception const& e)
        {
            return fail(e.what());
        }
    }

    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override
    {
        preloadKernels();
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
        try
        {
            logPluginError(std::string(Info::kName) + ": " + message);
        }
        catch (std::exception const&)
        {
        }
        return -1;
    }

    bool quantized() const
    {
        return Spec::quantized(mFields);
    }

    ActivationWorkspace space(nvinfer1::Dims const& x) const
    {
        return ActivationWorkspace{rowsOf(x), mFields.in_features, mFields.out_features};
    }

    // The FP8 plugins refuse a device without FP8 tensor cores (kMinArch, from the contract).
    int32_t checkDevice() const noexcept
    {
        if (Info::kMinArch == 0)
        {
            return 0;
        }
        std::string why;
        int32_t const arch = deviceArch(why);
        if (arch < 0)
        {
            return fail(why);
        }
        if (arch < Info::kMinArch)
        {
            return fail("needs FP8 tensor cores, compute capability " + std::to_string(Info::kMinArch / 10) + "."
                + std::to_string(Info::kMinArch % 10) + " or newer; this device is " + std::to_string(arch / 10) + "."
                + std::to_string(arch % 10));
        }
        return 0;
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
            bool const text = Info::kFieldSpecs[i].type == FieldType::kChar;
            mFieldNames.emplace_back(Info::kFieldSpecs[i].name, nullptr,
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

// Shape checks shared by the plugins: x's last dimension and the bias.
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
    return "";
}

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

// The weights of the scalar-code plugins: weight [N, K] (8-bit) or [N, K / 2] (4-bit) INT8 bytes,
// the per-span side bytes [N, K / 32] (4-bit) and the row scales [N].
template <typename Fields>
std::string checkScalarWeights(Fields const& f, nvinfer1::Dims const& weight, nvinfer1::Dims const* side,
    nvinfer1::Dims const& scale, char const* sideName)
{
    int64_t const k = f.in_features;
    int64_t const n = f.out_features;
    if (!isShape(weight, {n, f.weight_bits == 4 ? k / 2 : k}))
    {
        return "weight must be [out_features, in_features * weight_bits / 8]";
    }
    if (side != nullptr && !isShape(*side, {n, k / 32}))
    {
        return std::string(sideName) + " must be [out_features, in_features / 32]";
    }
    return isShape(scale, {n}) ? "" : "weight_scale must be [out_features]";
}

} // namespace dit_export
