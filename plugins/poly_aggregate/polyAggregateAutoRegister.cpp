/*
 * libpom_deploy_plugins_autoregister.so: registration of the PolyAggregate creator when the
 * library is loaded by a plain dlopen (ctypes.CDLL, Polygraphy's --plugins, trtexec
 * --staticPlugins, Triton's plugin list), for the callers that do not use
 * IPluginRegistry::loadLibrary.
 *
 * The creator itself is handed out only by libpom_deploy_plugins.so's getCreators, which this
 * library links against: a registry that loads libpom_deploy_plugins.so with loadLibrary owns
 * what it gets, and nothing is registered twice from one library. This one registers into the
 * global registry of the libnvinfer already loaded in the process (looked up at run time, so that
 * building needs only TensorRT's headers) and deregisters when it is unloaded.
 */
#include "polyAggregatePlugin.h"

#include <NvInferVersion.h>

#include <dlfcn.h>

#include <cstdint>
#include <iostream>
#include <string>

namespace
{

//! The libnvinfer of TensorRT's major version already loaded in this process, or null. The
//! reference taken here is kept until unload: libnvinfer must outlive the registration.
void* loadedTensorRT()
{
    std::string const soname = "libnvinfer.so." + std::to_string(NV_TENSORRT_MAJOR);
    return dlopen(soname.c_str(), RTLD_LAZY | RTLD_NOLOAD);
}

struct LoadTimeRegistration
{
    void* tensorrt{nullptr};
    nvinfer1::IPluginRegistry* registry{nullptr};
    nvinfer1::IPluginCreatorInterface* creator{nullptr};

    LoadTimeRegistration()
    {
        tensorrt = loadedTensorRT();
        if (tensorrt == nullptr)
        {
            std::cerr << "[pom_deploy::PolyAggregate] libnvinfer.so." << NV_TENSORRT_MAJOR
                      << " is not loaded: nothing registered (load TensorRT first)" << std::endl;
            return;
        }
        using GetPluginRegistry = nvinfer1::IPluginRegistry* (*) ();
        auto const getRegistry = reinterpret_cast<GetPluginRegistry>(dlsym(tensorrt, "getPluginRegistry"));
        registry = getRegistry != nullptr ? getRegistry() : nullptr;
        int32_t count = 0;
        nvinfer1::IPluginCreatorInterface* const* creators = getCreators(count);
        if (registry != nullptr && count == 1 && registry->registerCreator(*creators[0], pom::kPluginNamespace))
        {
            creator = creators[0];
        }
    }

    ~LoadTimeRegistration()
    {
        if (creator != nullptr)
        {
            registry->deregisterCreator(*creator);
        }
        if (tensorrt != nullptr)
        {
            dlclose(tensorrt);
        }
    }

    LoadTimeRegistration(LoadTimeRegistration const&) = delete;
    LoadTimeRegistration& operator=(LoadTimeRegistration const&) = delete;
};

LoadTimeRegistration const gRegistration;

} // namespace

//! Whether the load-time registration succeeded (for tests and diagnostics).
extern "C" POM_API int pomPolyAggregateAutoRegistered()
{
    return gRegistration.creator != nullptr ? 1 : 0;
}
