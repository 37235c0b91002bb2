// Registration of every dit-export plugin: statically when the library is loaded
// (REGISTER_TENSORRT_PLUGIN, for Python's ctypes load, C++ and trtexec --staticPlugins), and
// through getCreators for TensorRT's dynamic plugin loading (trtexec --dynamicPlugins,
// IPluginRegistry::loadLibrary).
#include "ditFp4GemmPlugin/ditFp4GemmPlugin.h"
#include "ditIntGemmPlugin/ditIntGemmPlugin.h"
#include "ditVqGemmPlugin/ditVqGemmPlugin.h"

#include <cstdio>
#include <mutex>

namespace dit_export
{
namespace
{

std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};

} // namespace

namespace
{

void logPlugin(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        std::lock_guard<std::mutex> lock(gLoggerMutex);
        nvinfer1::ILogger* logger = gLoggerFinder ? gLoggerFinder->findLogger() : nullptr;
        if (logger)
        {
            logger->log(severity, message.c_str());
            return;
        }
    }
    catch (std::exception const&)
    {
    }
    std::fprintf(stderr, "[dit_export] %s\n", message.c_str());
}

} // namespace

void logPluginError(std::string const& message) noexcept
{
    logPlugin(nvinfer1::ILogger::Severity::kERROR, message);
}

void logPluginWarning(std::string const& message) noexcept
{
    logPlugin(nvinfer1::ILogger::Severity::kWARNING, message);
}

REGISTER_TENSORRT_PLUGIN(DitIntGemmPluginCreator);
REGISTER_TENSORRT_PLUGIN(DitFp4GemmPluginCreator);
REGISTER_TENSORRT_PLUGIN(DitVqGemmPluginCreator);

} // namespace dit_export

extern "C" TENSORRTAPI nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static dit_export::DitIntGemmPluginCreator intGemm;
    static dit_export::DitFp4GemmPluginCreator fp4Gemm;
    static dit_export::DitVqGemmPluginCreator vqGemm;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&intGemm, &fp4Gemm, &vqGemm};
    nbCreators = 3;
    return creators;
}

extern "C" TENSORRTAPI void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    std::lock_guard<std::mutex> lock(dit_export::gLoggerMutex);
    dit_export::gLoggerFinder = finder;
}
