// The C API: argument checks, the device check, and the choice of GEMM path.
//
//   scalar weights, INT8 or INT4 activations                  -> 8-bit MMA, INT8 (sm_80+)
//   FP4 / INT4 weights, FP8 or FP4 activations, sm_89 / sm_90 -> 8-bit MMA, FP8 E4M3
//   anything else (no activation quantization, Ampere FP8/FP4,
//   INT8 weights with FP8 activations), and codebook weights  -> FP16 WMMA
#include "kernelCommon.cuh"

#include <string>

namespace dit_export
{

int32_t launchMma8(DitGemmIO const& io, DitScalarWeights const& w, uint8_t const* codes, float const* scales, bool fp8,
    cudaStream_t stream);
int32_t launchWmmaScalar(DitGemmIO const& io, DitScalarWeights const& weights, ActivationSource source,
    uint8_t const* codes, float const* scales, cudaStream_t stream);
int32_t launchWmmaCodebook(DitGemmIO const& io, DitVqWeights const& weights, ActivationSource source,
    uint8_t const* codes, float const* scales, cudaStream_t stream);

namespace
{

thread_local std::string lastError;

int32_t fail(std::string message)
{
    setLastError(std::move(message));
    return 1;
}

int32_t computeCapability()
{
    int32_t device = 0;
    int32_t major = 0;
    int32_t minor = 0;
    if (cudaGetDevice(&device) != cudaSuccess
        || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess
        || cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
    {
        return -1;
    }
    return major * 10 + minor;
}

std::string checkIO(DitGemmIO const& io)
{
    if (io.m < 0 || io.k <= 0 || io.n <= 0)
    {
        return "GEMM sizes must be positive (M >= 0, K > 0, N > 0)";
    }
    if (io.x == nullptr || io.y == nullptr)
    {
        return "x and y must not be null";
    }
    if (io.io_type != DIT_FLOAT32 && io.io_type != DIT_FLOAT16)
    {
        return "io_type must be DIT_FLOAT32 or DIT_FLOAT16";
    }
    if (io.rotation_block < 0 || (io.rotation_block > 0 && (io.k % io.rotation_block || io.hadamard == nullptr)))
    {
        return "rotation_block must divide K and come with its Hadamard block";
    }
    if (io.act_mode < DIT_ACT_NONE || io.act_mode > DIT_ACT_DYNAMIC)
    {
        return "unknown act_mode";
    }
    if ((io.act_mode == DIT_ACT_NONE) != (io.act_format == DIT_ACT_FORMAT_NONE)
        || io.act_format < DIT_ACT_FORMAT_NONE || io.act_format > DIT_ACT_FORMAT_UINT4)
    {
        return "act_format must be none exactly when act_mode is none";
    }
    if (io.act_mode == DIT_ACT_STATIC
        && (io.act_scale_table == nullptr || io.timestep_bucket == nullptr || io.rows_per_sample <= 0))
    {
        return "static activations need the scale table, the timestep buckets and rows_per_sample";
    }
    if (io.act_format == DIT_ACT_FORMAT_UINT4 && (io.act_mode != DIT_ACT_STATIC || io.act_zero_table == nullptr))
    {
        return "UINT4 activations are static and need the zero-point table";
    }
    if (io.act_mode != DIT_ACT_NONE && (io.act_group_size < 0 || io.k % activationGroup(io)))
    {
        return "the activation group size must divide K";
    }
    if ((io.rotation_block > 0 || io.act_mode != DIT_ACT_NONE) && io.workspace == nullptr && io.m > 0)
    {
        return "this GEMM needs a workspace of ditGemmWorkspaceSize bytes";
    }
    return "";
}

// Rotation and activation quantization; returns the activation source for the GEMM.
int32_t prepareActivations(DitGemmIO const& io, Workspace const& ws, ActivationSource& source, cudaStream_t stream)
{
    source = ActivationSource{io.x, io.io_type == DIT_FLOAT32};
    if (io.rotation_block > 0)
    {
        if (launchRotation(io, ws.rotated, stream))
        {
            return fail("rotation kernel launch failed");
        }
        source = ActivationSource{ws.rotated, true};
    }
    if (io.act_mode != DIT_ACT_NONE && launchQuantization(io, source, ws.codes, ws.scales, stream))
    {
        return fail("activation quantization kernel launch failed");
    }
    return 0;
}

constexpr int32_t kProceed = -1;

// The checks and preparation every GEMM starts with: 0 when there is nothing to compute (M = 0),
// 1 on a problem (ditLastError says which), kProceed with the workspace and activations ready.
int32_t startGemm(DitGemmIO const* io, std::string const& weightProblem, Workspace& ws, ActivationSource& source,
    cudaStream_t stream)
{
    if (io == nullptr)
    {
        return fail("null argument");
    }
    std::string const problem = checkIO(*io);
    if (!problem.empty() || !weightProblem.empty())
    {
        return fail(problem.empty() ? weightProblem : problem);
    }
    if (ditCheckDevice())
    {
        return 1;
    }
    if (io->m == 0)
    {
        return 0;
    }
    ws = workspaceLayout(*io);
    return prepareActivations(*io, ws, source, stream) ? 1 : kProceed;
}

} // namespace

void setLastError(std::string message)
{
    lastError = std::move(message);
}

} // namespace dit_export

using namespace dit_export;

extern "C" size_t ditGemmWorkspaceSize(DitGemmIO const* io)
{
    return io ? workspaceLayout(*io).bytes : 0;
}

extern "C" int32_t ditCheckDevice(void)
{
    int32_t const cc = computeCapability();
    if (cc < 0)
    {
        return fail("no CUDA device");
    }
    if (cc != 80 && cc != 86 && cc != 89 && cc != 90)
    {
        return fail("compute capability " + std::to_string(cc / 10) + "." + std::to_string(cc % 10)
            + " is not supported; supported: 8.0, 8.6, 8.9, 9.0");
    }
    return 0;
}

extern "C" char const* ditLastError(void)
{
    return lastError.c_str();
}

extern "C" int32_t ditQuantizeActivations(DitGemmIO const* io, uint8_t* codes, float* scales, cudaStream_t stream)
{
    if (io == nullptr || codes == nullptr || scales == nullptr)
    {
        return fail("null argument");
    }
    std::string const problem = checkIO(*io);
    if (!problem.empty() || io->act_mode == DIT_ACT_NONE)
    {
        return fail(problem.empty() ? "act_mode none: nothing to quantize" : problem);
    }
    if (ditCheckDevice())
    {
        return 1;
    }
    Workspace ws = workspaceLayout(*io);
    ws.codes = codes;
    ws.scales = scales;
    ActivationSource source{};
    return prepareActivations(*io, ws, source, stream);
}

extern "C" int32_t ditScalarGemm(DitGemmIO const* io, DitScalarWeights const* w, cudaStream_t stream)
{
    std::string weightProblem;
    if (w == nullptr)
    {
        weightProblem = "null argument";
    }
    else if (w->codes == nullptr || w->scale == nullptr || w->group_size <= 0 || w->format < DIT_WEIGHT_INT4
        || w->format > DIT_WEIGHT_FP4E1M2)
    {
        weightProblem = "weights need codes, scales, a positive group size and a known format";
    }
    else if (io != nullptr && w->format != DIT_WEIGHT_INT8 && io->n % 2)
    {
        weightProblem = "4-bit weights need an even N (two codes per byte along N)";
    }
    Workspace ws;
    ActivationSource source{};
    if (int32_t const start = startGemm(io, weightProblem, ws, source, stream); start != kProceed)
    {
        return start;
    }
    bool const eightBitShapes = io->k % 32 == 0 && (w->group_size % 32 == 0 || w->group_size >= io->k)
        && activationGroup(*io) % 32 == 0;
    int32_t const group = w->group_size >= io->k ? io->k : w->group_size;
    DitScalarWeights weights = *w;
    weights.group_size = group;
    bool const fp4Weights = w->format >= DIT_WEIGHT_FP4E2M1 || w->format == DIT_WEIGHT_INT4;
    bool const fp8Acts = io->act_format == DIT_ACT_FORMAT_FP8E4M3 || io->act_format == DIT_ACT_FORMAT_FP4E2M1;
    int32_t status = 0;
    bool const intActs = io->act_format == DIT_ACT_FORMAT_INT8 || io->act_format == DIT_ACT_FORMAT_INT4
        || io->act_format == DIT_ACT_FORMAT_UINT4;
    if (eightBitShapes && intActs)
    {
        status = launchMma8(*io, weights, ws.codes, ws.scales, false, stream);
    }
    else if (eightBitShapes && fp8Acts && fp4Weights && computeCapability() >= 89)
    {
        status = launchMma8(*io, weights, ws.codes, ws.scales, true, stream);
    }
    else
    {
        status = launchWmmaScalar(*io, weights, source, ws.codes, ws.scales, stream);
    }
    return status ? fail("GEMM kernel launch failed") : 0;
}

extern "C" int32_t ditVqGemm(DitGemmIO const* io, DitVqWeights const* w, cudaStream_t stream)
{
    std::string weightProblem;
    if (w == nullptr)
    {
        weightProblem = "null argument";
    }
    else if (w->codebook == nullptr || w->assignments == nullptr || w->dim <= 0 || w->index_bits <= 0
        || w->index_bits > 16 || w->codewords > (1 << w->index_bits) || w->codewords <= 0)
    {
        weightProblem = "codebook weights need a codebook, assignments, dim > 0 and 1 to 16 index bits";
    }
    Workspace ws;
    ActivationSource source{};
    if (int32_t const start = startGemm(io, weightProblem, ws, source, stream); start != kProceed)
    {
        return start;
    }
    return launchWmmaCodebook(*io, *w, source, ws.codes, ws.scales, stream) ? fail("GEMM kernel launch failed") : 0;
}
