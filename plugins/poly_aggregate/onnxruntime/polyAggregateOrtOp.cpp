/*
 * PolyAggregate as an onnxruntime custom op for the CPU execution provider.
 *
 * A session that loads this library (SessionOptions.register_custom_ops_library) runs every
 * pom_deploy::PolyAggregate node with the CPU kernel (polyAggregateCpuKernel.cpp) on
 * onnxruntime's intra-op threads (op type and domain: the plugin's name and namespace,
 * polyAggregateIdentity.h), instead of inlining the node's model-local function (the
 * decomposed ops). Built against onnxruntime's C API header only; needs onnxruntime >= 1.17 at
 * run time (KernelContext_ParallelFor).
 */
#include "polyAggregateCommon.h"
#include "polyAggregateIdentity.h"

#include <onnxruntime_c_api.h>

#include <cstring>
#include <new>
#include <string>
#include <vector>

namespace
{

// The oldest onnxruntime whose C API has everything used here.
constexpr uint32_t kOrtApiVersion = 17;

struct Kernel
{
    OrtApi const* api;
    PomPolyAggregateDesc desc; // attributes; shapes and dtype filled per call
};

OrtStatus* error(OrtApi const* api, std::string const& message, OrtErrorCode code = ORT_INVALID_ARGUMENT)
{
    return api->CreateStatus(code, ("PolyAggregate: " + message).c_str());
}

//! The status of a kernel status code: argument errors are the node's or the inputs' fault, the rest
//! (out of memory, a failed parallel loop) the machine's.
OrtStatus* kernelError(OrtApi const* api, int status)
{
    bool const machine = status == POM_ERROR_OUT_OF_MEMORY || status == POM_ERROR_PARALLEL_FOR;
    return error(api, pom::statusText(status), machine ? ORT_FAIL : ORT_INVALID_ARGUMENT);
}

//! Runs `body` (which returns a status); an allocation failure inside it becomes an ORT_FAIL status
//! instead of an exception crossing onnxruntime's C callback.
template <typename Body>
OrtStatus* guarded(OrtApi const* api, Body&& body)
{
    try
    {
        return body();
    }
    catch (std::bad_alloc const&)
    {
        return kernelError(api, POM_ERROR_OUT_OF_MEMORY);
    }
}

//! A string attribute, or `fallback` when the node leaves it off.
std::string stringAttribute(OrtApi const* api, OrtKernelInfo const* info, char const* name, char const* fallback)
{
    size_t size = 0;
    OrtStatus* status = api->KernelInfoGetAttribute_string(info, name, nullptr, &size);
    if (status != nullptr)
    {
        api->ReleaseStatus(status);
        return fallback;
    }
    std::string value(size, '\0');
    status = api->KernelInfoGetAttribute_string(info, name, value.data(), &size);
    if (status != nullptr)
    {
        api->ReleaseStatus(status);
        return fallback;
    }
    value.resize(std::strlen(value.c_str()));
    return value;
}

int64_t intAttribute(OrtApi const* api, OrtKernelInfo const* info, char const* name, int64_t fallback)
{
    int64_t value = fallback;
    OrtStatus* status = api->KernelInfoGetAttribute_int64(info, name, &value);
    if (status != nullptr)
    {
        api->ReleaseStatus(status);
        return fallback;
    }
    return value;
}

//! The code of `value` in `names` (codes counted from `first`), or -1.
int codeOf(std::string const& value, std::vector<char const*> const& names, int first)
{
    for (size_t i = 0; i < names.size(); ++i)
    {
        if (value == names[i])
        {
            return first + static_cast<int>(i);
        }
    }
    return -1;
}

OrtStatus* createKernel(OrtApi const* api, OrtKernelInfo const* info, void** out)
{
    PomPolyAggregateDesc desc{};
    std::string const variant = stringAttribute(api, info, pom::kFieldVariant, "");
    std::string const mode = stringAttribute(api, info, pom::kFieldMode, "");
    std::string const rope = stringAttribute(api, info, pom::kFieldRope, "none");
    desc.variant = codeOf(variant, {"v1", "v2"}, POM_VARIANT_V1);
    desc.mode = codeOf(mode, {"mean", "causal", "masked"}, POM_MODE_MEAN);
    desc.rope = codeOf(rope, {"none", "1d", "2d"}, POM_ROPE_NONE);
    if (desc.variant < 0 || desc.mode < 0 || desc.rope < 0)
    {
        return error(api, "unknown variant '" + variant + "', mode '" + mode + "' or rope '" + rope + "'");
    }
    int64_t const degree = intAttribute(api, info, pom::kFieldDegree, 0);
    if (degree < 1 || degree > POM_MAX_DEGREE)
    {
        return kernelError(api, POM_ERROR_BAD_DEGREE);
    }
    desc.degree = static_cast<int32_t>(degree);
    desc.frameTokens = intAttribute(api, info, pom::kFieldFrameTokens, 0);
    int const status = pom::validateDescription(&desc);
    if (status != POM_SUCCESS)
    {
        return kernelError(api, status);
    }
    *out = new Kernel{api, desc};
    return nullptr;
}

OrtStatus* ORT_API_CALL createKernelGuarded(OrtCustomOp const* /*op*/, OrtApi const* api, OrtKernelInfo const* info, void** out)
{
    return guarded(api, [&] { return createKernel(api, info, out); });
}

void ORT_API_CALL destroyKernel(void* kernel)
{
    delete static_cast<Kernel*>(kernel);
}

//! Shape and element type of one input.
OrtStatus* describe(OrtApi const* api, OrtValue const* value, std::vector<int64_t>& dims, ONNXTensorElementDataType& type)
{
    OrtTensorTypeAndShapeInfo* info = nullptr;
    OrtStatus* status = api->GetTensorTypeAndShape(value, &info);
    size_t rank = 0;
    if (status == nullptr)
    {
        status = api->GetDimensionsCount(info, &rank);
    }
    if (status == nullptr)
    {
        dims.resize(rank);
        status = api->GetDimensions(info, dims.data(), rank);
    }
    if (status == nullptr)
    {
        status = api->GetTensorElementType(info, &type);
    }
    if (info != nullptr)
    {
        api->ReleaseTensorTypeAndShapeInfo(info);
    }
    return status;
}

struct ParallelContext
{
    OrtApi const* api;
    OrtKernelContext* context;
};

int ortParallelFor(void* pool, PomTask task, void* data, size_t count)
{
    auto const* parallel = static_cast<ParallelContext const*>(pool);
    OrtStatus* status = parallel->api->KernelContext_ParallelFor(parallel->context, task, count, 0, data);
    if (status == nullptr)
    {
        return 0;
    }
    parallel->api->ReleaseStatus(status);
    return 1;
}

std::string dimsText(std::vector<int64_t> const& dims)
{
    std::string text = "(";
    for (size_t i = 0; i < dims.size(); ++i)
    {
        text += (i ? ", " : "") + std::to_string(dims[i]);
    }
    return text + ")";
}

OrtStatus* compute(void* opKernel, OrtKernelContext* context)
{
    Kernel const& kernel = *static_cast<Kernel const*>(opKernel);
    OrtApi const* api = kernel.api;
    PomPolyAggregateDesc desc = kernel.desc;
    size_t count = 0;
    OrtStatus* status = api->KernelContext_GetInputCount(context, &count);
    if (status != nullptr)
    {
        return status;
    }
    size_t const expected = 1 + (desc.variant == POM_VARIANT_V2) + (desc.mode == POM_MODE_MASKED) + 2 * (desc.rope != POM_ROPE_NONE);
    if (count != expected)
    {
        return error(api, "expected " + std::to_string(expected) + " inputs (x, then coeff for v2, mask for masked, cos and sin for rope), got " + std::to_string(count));
    }
    std::vector<OrtValue const*> inputs(count);
    std::vector<std::vector<int64_t>> dims(count);
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    for (size_t i = 0; i < count && status == nullptr; ++i)
    {
        status = api->KernelContext_GetInput(context, i, &inputs[i]);
        if (status == nullptr)
        {
            status = describe(api, inputs[i], dims[i], type);
        }
    }
    if (status != nullptr)
    {
        return status;
    }
    std::vector<int64_t> const& x = dims[0];
    if (x.size() != 3)
    {
        return error(api, "x must be (B, N, C), got " + dimsText(x));
    }
    desc.batch = x[0];
    desc.tokens = x[1];
    desc.channels = x[2];
    desc.dtype = type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? POM_DTYPE_FLOAT16
        : type == ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16      ? POM_DTYPE_BFLOAT16
                                                              : POM_DTYPE_FLOAT32;
    void const* data[5] = {nullptr, nullptr, nullptr, nullptr, nullptr}; // x, coeff, mask, cos, sin
    size_t next = 0;
    auto take = [&](int slot, std::vector<int64_t> const& shape) -> OrtStatus* {
        if (dims[next] != shape)
        {
            static char const* const names[] = {"x", "coeff", "mask", "cos", "sin"};
            return error(api, std::string(names[slot]) + " must be " + dimsText(shape) + ", got " + dimsText(dims[next]));
        }
        void* pointer = nullptr;
        OrtStatus* s = api->GetTensorMutableData(const_cast<OrtValue*>(inputs[next]), &pointer);
        data[slot] = pointer;
        ++next;
        return s;
    };
    status = take(0, x);
    if (status == nullptr && desc.variant == POM_VARIANT_V2)
    {
        status = take(1, {desc.channels, desc.degree});
    }
    if (status == nullptr && desc.mode == POM_MODE_MASKED)
    {
        status = take(2, {desc.batch, desc.tokens});
    }
    if (status == nullptr && desc.rope != POM_ROPE_NONE)
    {
        std::vector<int64_t> const& table = dims[next];
        desc.ropePerBatch = !table.empty() && table[0] == desc.batch && desc.batch != 1;
        std::vector<int64_t> const shape{desc.ropePerBatch ? desc.batch : 1, desc.tokens, desc.channels / 2};
        status = take(3, shape);
        if (status == nullptr)
        {
            status = take(4, shape);
        }
    }
    if (status != nullptr)
    {
        return status;
    }
    int64_t const outputDims[3] = {desc.batch, desc.mode == POM_MODE_CAUSAL ? desc.tokens : 1, desc.channels};
    OrtValue* output = nullptr;
    void* y = nullptr;
    status = api->KernelContext_GetOutput(context, 0, outputDims, 3, &output);
    if (status == nullptr)
    {
        status = api->GetTensorMutableData(output, &y);
    }
    if (status != nullptr)
    {
        return status;
    }
    ParallelContext parallel{api, context};
    int const result = pomPolyAggregateCpuKernel(&desc, data[0], data[1], data[2], data[3], data[4], y, ortParallelFor, &parallel);
    return result == POM_SUCCESS ? nullptr : kernelError(api, result);
}

OrtStatus* ORT_API_CALL computeGuarded(void* opKernel, OrtKernelContext* context)
{
    return guarded(static_cast<Kernel const*>(opKernel)->api, [&] { return compute(opKernel, context); });
}

//! One registration per element type (x, coefficients, mask, tables and output share it).
template <ONNXTensorElementDataType Type>
OrtCustomOp makeOp()
{
    OrtCustomOp op{};
    op.version = kOrtApiVersion;
    op.GetName = [](OrtCustomOp const*) { return pom::kPluginName; };
    op.GetExecutionProviderType = [](OrtCustomOp const*) -> char const* { return "CPUExecutionProvider"; };
    op.GetInputTypeCount = [](OrtCustomOp const*) -> size_t { return 1; };
    op.GetInputType = [](OrtCustomOp const*, size_t) { return Type; };
    op.GetInputCharacteristic = [](OrtCustomOp const*, size_t) { return INPUT_OUTPUT_VARIADIC; };
    op.GetVariadicInputMinArity = [](OrtCustomOp const*) { return 1; };
    op.GetVariadicInputHomogeneity = [](OrtCustomOp const*) { return 1; };
    op.GetOutputTypeCount = [](OrtCustomOp const*) -> size_t { return 1; };
    op.GetOutputType = [](OrtCustomOp const*, size_t) { return Type; };
    op.GetOutputCharacteristic = [](OrtCustomOp const*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    op.GetInputMemoryType = [](OrtCustomOp const*, size_t) { return OrtMemTypeDefault; };
    op.GetVariadicOutputMinArity = [](OrtCustomOp const*) { return 1; };
    op.GetVariadicOutputHomogeneity = [](OrtCustomOp const*) { return 0; };
    op.CreateKernelV2 = createKernelGuarded;
    op.KernelComputeV2 = computeGuarded;
    op.KernelDestroy = destroyKernel;
    op.GetStartVersion = [](OrtCustomOp const*) { return 1; };
    op.GetEndVersion = [](OrtCustomOp const*) { return 2147483647; };
    return op;
}

OrtCustomOp const kOps[] = {
    makeOp<ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT>(),
    makeOp<ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16>(),
    makeOp<ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16>(),
};

} // namespace

//! Entry point onnxruntime calls when a session registers this library.
extern "C" POM_API OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, OrtApiBase const* base)
{
    OrtApi const* api = base->GetApi(kOrtApiVersion);
    if (api == nullptr)
    {
        return base->GetApi(1)->CreateStatus(ORT_FAIL, "the pom_deploy PolyAggregate custom op needs onnxruntime >= 1.17");
    }
    // The domain must outlive every session that uses it: created once (a function-local static,
    // so sessions created at once on several threads see one domain) and never released.
    static OrtCustomOpDomain* const domain = [api]() -> OrtCustomOpDomain* {
        OrtCustomOpDomain* created = nullptr;
        OrtStatus* status = api->CreateCustomOpDomain(pom::kPluginNamespace, &created);
        for (OrtCustomOp const& op : kOps)
        {
            if (status == nullptr)
            {
                status = api->CustomOpDomain_Add(created, &op);
            }
        }
        if (status == nullptr)
        {
            return created;
        }
        api->ReleaseStatus(status);
        if (created != nullptr)
        {
            api->ReleaseCustomOpDomain(created);
        }
        return nullptr;
    }();
    if (domain == nullptr)
    {
        return api->CreateStatus(ORT_FAIL, "PolyAggregate: the custom-op domain could not be created");
    }
    return api->AddCustomOpDomain(options, domain);
}
