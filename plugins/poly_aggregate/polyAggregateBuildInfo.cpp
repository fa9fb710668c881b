/*
 * What a pom-deploy native library was built for, as one string in the library's read-only data:
 * "pom_deploy_build_info=1;onnxruntime_api=29;tensorrt=10.3.0" (each part only when built in).
 * pom_deploy reads it from the file before it loads the library (pom_deploy/ops/native_libraries.py)
 * and refuses a library built for another onnxruntime C API or TensorRT than the installed one;
 * `pom-deploy doctor` shows it. Compiled into each library with the definitions of what it holds.
 */
#include "polyAggregate.h"

#ifdef POM_BUILD_INFO_ONNXRUNTIME
#include <onnxruntime_c_api.h>
#endif
#ifdef POM_BUILD_INFO_TENSORRT
#include <NvInferVersion.h>
#endif

#define POM_TEXT(x) #x
#define POM_EXPANDED_TEXT(x) POM_TEXT(x)

extern "C" POM_API char const* pomDeployBuildInfo()
{
    return "pom_deploy_build_info=1"
#ifdef POM_BUILD_INFO_ONNXRUNTIME
           ";onnxruntime_api=" POM_EXPANDED_TEXT(ORT_API_VERSION)
#endif
#ifdef POM_BUILD_INFO_TENSORRT
           ";tensorrt=" POM_EXPANDED_TEXT(NV_TENSORRT_MAJOR) "." POM_EXPANDED_TEXT(NV_TENSORRT_MINOR) "." POM_EXPANDED_TEXT(
               NV_TENSORRT_PATCH)
#endif
        ;
}
