/*
 * TensorRT adapter of PolyAggregate: shape/type/format logic, fields and (de)serialization.
 * The math lives in polyAggregateKernel.cu behind the C ABI of polyAggregate.h.
 */
#include "polyAggregatePlugin.h"

#include <cstdint>
#include <cstring>
#include <exception>
#include <iostream>
#include <string>

using nvinfer1::DataType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;

namespace pom
{
namespace
{

nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};

void logError(std::string const& message)
{
    std::string const text = std::string{"[pom_deploy::PolyAggregate] "} + message;
    nvinfer1::ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
    if (logger != nullptr)
    {
        logger->log(nvinfer1::ILogger::Severity::kERROR, text.c_str());
    }
    else
    {
        std::cerr << text << std::endl;
    }
}

bool toPomDType(DataType type, int32_t& dtype)
{
    switch (type)
    {
    case DataType::kFLOAT: dtype = POM_DTYPE_FLOAT32; return true;
    case DataType::kHALF: dtype = POM_DTYPE_FLOAT16; return true;
    case DataType::kBF16: dtype = POM_DTYPE_BFLOAT16; return true;
    default: return false;
    }
}

char const* variantText(int32_t variant)
{
    return variant == POM_VARIANT_V2 ? "v2" : "v1";
}

char const* modeText(int32_t mode)
{
    switch (mode)
    {
    case POM_MODE_CAUSAL: return "causal";
    case POM_MODE_MASKED: return "masked";
    default: return "mean";
    }
}

char const* ropeText(int32_t rope)
{
    switch (rope)
    {
    case POM_ROPE_1D: return "1d";
    case POM_ROPE_2D: return "2d";
    default: return "none";
    }
}

bool readString(PluginField const& field, std::string& value, std::string& error)
{
    if (field.type != PluginFieldType::kCHAR || field.data == nullptr || field.length < 0)
    {
        error = std::string{"field '"} + field.name + "' must be a string (kCHAR)";
        return false;
    }
    // The ONNX parser counts the terminating NUL in `length`; other callers may not.
    auto const* text = static_cast<char const*>(field.data);
    value.assign(text, strnlen(text, static_cast<size_t>(field.length)));
    return true;
}

bool readInt(PluginField const& field, int64_t& value, std::string& error)
{
    if (field.data != nullptr && field.length == 1)
    {
        switch (field.type)
        {
        case PluginFieldType::kINT32: value = *static_cast<int32_t const*>(field.data); return true;
        case PluginFieldType::kINT64: value = *static_cast<int64_t const*>(field.data); return true;
        default: break;
        }
    }
    error = std::string{"field '"} + field.name + "' must be one kINT32 or kINT64 value";
    return false;
}

//! Shape of a (B, N, C) input as a C-ABI description; negative dims stay negative.
PomPolyAggregateDesc describe(PolyAggregateConfig const& config, nvinfer1::Dims const& x, int32_t dtype)
{
    PomPolyAggregateDesc d{};
    d.batch = x.d[0];
    d.tokens = x.d[1];
    d.channels = x.d[2];
    d.degree = config.degree;
    d.variant = config.variant;
    d.mode = config.mode;
    d.dtype = dtype;
    d.frameTokens = config.frameTokens;
    d.rope = config.rope;
    return d;
}

//! The largest problem a profile with maximum x shape `xMax` admits: N rounded down to a
//! multiple of frame_tokens (the workspace grows with B, N and C, so it bounds every smaller one).
PomPolyAggregateDesc largestValidProblem(PolyAggregateConfig const& config, nvinfer1::Dims const& xMax, int32_t dtype)
{
    PomPolyAggregateDesc d = describe(config, xMax, dtype);
    if (d.frameTokens > 0)
    {
        d.tokens = d.tokens / d.frameTokens * d.frameTokens;
    }
    return d;
}

bool knownAndDiffer(int64_t a, int64_t b)
{
    return a >= 0 && b >= 0 && a != b;
}

} // namespace

int32_t PolyAggregateConfig::cosIndex() const
{
    return 1 + (variant == POM_VARIANT_V2 ? 1 : 0) + (mode == POM_MODE_MASKED ? 1 : 0);
}

int32_t PolyAggregateConfig::nbInputs() const
{
    return cosIndex() + (rope != POM_ROPE_NONE ? 2 : 0);
}

bool parsePolyAggregateFields(PluginFieldCollection const* fc, PolyAggregateConfig& config, std::string& error)
{
    if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr))
    {
        error = "no plugin fields given";
        return false;
    }
    bool hasVariant = false;
    bool hasDegree = false;
    bool hasMode = false;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& field = fc->fields[i];
        std::string const name = field.name != nullptr ? field.name : "";
        std::string text;
        if (name == kFieldVariant)
        {
            if (!readString(field, text, error))
            {
                return false;
            }
            if (text != "v1" && text != "v2")
            {
                error = "variant must be \"v1\" or \"v2\", got \"" + text + "\"";
                return false;
            }
            config.variant = text == "v1" ? POM_VARIANT_V1 : POM_VARIANT_V2;
            hasVariant = true;
        }
        else if (name == kFieldMode)
        {
            if (!readString(field, text, error))
            {
                return false;
            }
            if (text == "mean")
            {
                config.mode = POM_MODE_MEAN;
            }
            else if (text == "causal")
            {
                config.mode = POM_MODE_CAUSAL;
            }
            else if (text == "masked")
            {
                config.mode = POM_MODE_MASKED;
            }
            else
            {
                error = "mode must be \"mean\", \"causal\" or \"masked\", got \"" + text + "\"";
                return false;
            }
            hasMode = true;
        }
        else if (name == kFieldDegree)
        {
            int64_t degree = 0;
            if (!readInt(field, degree, error))
            {
                return false;
            }
            if (degree < 1 || degree > POM_MAX_DEGREE)
            {
                error = "degree must be in [1, " + std::to_string(POM_MAX_DEGREE) + "], got " + std::to_string(degree);
                return false;
            }
            config.degree = static_cast<int32_t>(degree);
            hasDegree = true;
        }
        else if (name == kFieldFrameTokens)
        {
            int64_t frameTokens = 0;
            if (!readInt(field, frameTokens, error))
            {
                return false;
            }
            if (frameTokens < 0 || frameTokens > INT32_MAX)
            {
                error = "frame_tokens must be in [0, 2^31), got " + std::to_string(frameTokens);
                return false;
            }
            config.frameTokens = static_cast<int32_t>(frameTokens);
        }
        else if (name == kFieldRope)
        {
            if (!readString(field, text, error))
            {
                return false;
            }
            if (text == "none")
            {
                config.rope = POM_ROPE_NONE;
            }
            else if (text == "1d")
            {
                config.rope = POM_ROPE_1D;
            }
            else if (text == "2d")
            {
                config.rope = POM_ROPE_2D;
            }
            else
            {
                error = "rope must be \"none\", \"1d\" or \"2d\", got \"" + text + "\"";
                return false;
            }
        }
        else if (name == kAttributePluginVersion || name == kAttributePluginNamespace)
        {
            // Parser-level attributes that picked this creator; nothing to configure.
        }
        else
        {
            error = "unknown field '" + name + "' (expected variant, degree, mode, frame_tokens, rope)";
            return false;
        }
    }
    if (!hasVariant || !hasDegree || !hasMode)
    {
        error = "fields variant, degree and mode are all required";
        return false;
    }
    if (config.frameTokens > 0 && config.mode != POM_MODE_CAUSAL)
    {
        error = "frame_tokens > 0 needs mode \"causal\"";
        return false;
    }
    if (config.rope != POM_ROPE_NONE && (config.variant != POM_VARIANT_V2 || config.degree > POM_MAX_ROPE_DEGREE))
    {
        error = "rope needs variant \"v2\" and degree <= " + std::to_string(POM_MAX_ROPE_DEGREE);
        return false;
    }
    return true;
}

PolyAggregatePlugin::PolyAggregatePlugin(PolyAggregateConfig const& config, std::string const& pluginNamespace)
    : mConfig(config)
    , mNamespace(pluginNamespace)
{
    updateSerializedFields();
}

PolyAggregatePlugin::PolyAggregatePlugin(PolyAggregatePlugin const& other)
    : IPluginV3(other)
    , IPluginV3OneCore(other)
    , IPluginV3OneBuild(other)
    , IPluginV3OneRuntime(other)
    , mConfig(other.mConfig)
    , mNamespace(other.mNamespace)
{
    updateSerializedFields();
}

void PolyAggregatePlugin::updateSerializedFields()
{
    mVariantText = variantText(mConfig.variant);
    mModeText = modeText(mConfig.mode);
    mRopeText = ropeText(mConfig.rope);
    // String lengths include the NUL, as the ONNX parser passes them.
    mSerializedFields = {
        PluginField{kFieldVariant, mVariantText.c_str(), PluginFieldType::kCHAR,
            static_cast<int32_t>(mVariantText.size() + 1)},
        PluginField{kFieldDegree, &mConfig.degree, PluginFieldType::kINT32, 1},
        PluginField{kFieldMode, mModeText.c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(mModeText.size() + 1)},
        PluginField{kFieldFrameTokens, &mConfig.frameTokens, PluginFieldType::kINT32, 1},
        PluginField{kFieldRope, mRopeText.c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(mRopeText.size() + 1)},
    };
    mSerialized.nbFields = static_cast<int32_t>(mSerializedFields.size());
    mSerialized.fields = mSerializedFields.data();
}

nvinfer1::IPluginCapability* PolyAggregatePlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* PolyAggregatePlugin::clone() noexcept
{
    try
    {
        return new PolyAggregatePlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(std::string{"clone failed: "} + e.what());
    }
    return nullptr;
}

char const* PolyAggregatePlugin::getPluginName() const noexcept
{
    return kPluginName;
}

char const* PolyAggregatePlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* PolyAggregatePlugin::getPluginNamespace() const noexcept
{
    return mNamespace.c_str();
}

int32_t PolyAggregatePlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t PolyAggregatePlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != mConfig.nbInputs() || nbOutputs != 1)
    {
        logError("expected " + std::to_string(mConfig.nbInputs()) + " inputs and 1 output");
        return -1;
    }
    nvinfer1::Dims const& x = in[0].desc.dims;
    if (x.nbDims != 3)
    {
        logError("x must be (batch, tokens, channels)");
        return -1;
    }
    int64_t const channels = x.d[2];
    if (mConfig.variant == POM_VARIANT_V1 && channels >= 0 && channels % mConfig.degree != 0)
    {
        logError("v1 needs channels (" + std::to_string(channels) + ") divisible by degree ("
            + std::to_string(mConfig.degree) + ")");
        return -1;
    }
    int32_t next = 1;
    if (mConfig.variant == POM_VARIANT_V2)
    {
        nvinfer1::Dims const& coeff = in[next++].desc.dims;
        if (coeff.nbDims != 2 || knownAndDiffer(coeff.d[0], channels) || knownAndDiffer(coeff.d[1], mConfig.degree))
        {
            logError("coeff must be (channels, degree)");
            return -1;
        }
    }
    if (mConfig.mode == POM_MODE_MASKED)
    {
        nvinfer1::Dims const& mask = in[next++].desc.dims;
        if (mask.nbDims != 2 || knownAndDiffer(mask.d[0], x.d[0]) || knownAndDiffer(mask.d[1], x.d[1]))
        {
            logError("mask must be (batch, tokens)");
            return -1;
        }
    }
    if (mConfig.rope != POM_ROPE_NONE)
    {
        int64_t const multiple = mConfig.rope == POM_ROPE_2D ? 4 : 2;
        if (channels >= 0 && channels % multiple != 0)
        {
            logError(std::string{"rope "} + ropeText(mConfig.rope) + " needs channels (" + std::to_string(channels)
                + ") divisible by " + std::to_string(multiple));
            return -1;
        }
        for (int32_t table = next; table < next + 2; ++table)
        {
            nvinfer1::Dims const& t = in[table].desc.dims;
            bool const batchOk = t.nbDims == 3 && (t.d[0] < 0 || t.d[0] == 1 || !knownAndDiffer(t.d[0], x.d[0]));
            if (!batchOk || knownAndDiffer(t.d[1], x.d[1]) || (channels >= 0 && knownAndDiffer(t.d[2], channels / 2)))
            {
                logError("cos and sin must be (batch or 1, tokens, channels / 2)");
                return -1;
            }
        }
    }
    if (mConfig.frameTokens > 0 && x.d[1] >= 0 && x.d[1] % mConfig.frameTokens != 0)
    {
        logError("tokens (" + std::to_string(x.d[1]) + ") must be a multiple of frame_tokens ("
            + std::to_string(mConfig.frameTokens) + ")");
        return -1;
    }
    // The workspace is sized for the profile's largest valid problem; a maximum that is invalid
    // for another reason than its tokens (channels) leaves no safe size, so the profile is refused.
    int32_t dtype = 0;
    if (in[0].max.nbDims == 3 && toPomDType(in[0].desc.type, dtype))
    {
        PomPolyAggregateDesc const largest = largestValidProblem(mConfig, in[0].max, dtype);
        int const status = pomPolyAggregateValidate(&largest);
        if (status != POM_SUCCESS)
        {
            logError("the profile's maximum x shape (" + std::to_string(in[0].max.d[0]) + ", "
                + std::to_string(in[0].max.d[1]) + ", " + std::to_string(in[0].max.d[2])
                + ") is invalid: " + pomPolyAggregateStatusString(status));
            return -1;
        }
    }
    return 0;
}

int32_t PolyAggregatePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != 1 || nbInputs != mConfig.nbInputs())
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t PolyAggregatePlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /* shapeInputs */, int32_t /* nbShapeInputs */, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    if (inputs == nullptr || outputs == nullptr || nbInputs != mConfig.nbInputs() || nbOutputs != 1
        || inputs[0].nbDims != 3)
    {
        logError("getOutputShapes: expected " + std::to_string(mConfig.nbInputs())
            + " inputs with x of rank 3 and 1 output");
        return -1;
    }
    outputs[0] = inputs[0];
    if (mConfig.mode != POM_MODE_CAUSAL)
    {
        outputs[0].d[1] = exprBuilder.constant(1);
    }
    return 0;
}

bool PolyAggregatePlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != nvinfer1::TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 0)
    {
        int32_t dtype = 0;
        return toPomDType(desc.type, dtype);
    }
    DataType const xType = inOut[0].desc.type;
    if (pos >= nbInputs)
    {
        return desc.type == xType; // y
    }
    // coeff, mask, cos and sin: x's type or float32 (exact coefficients, weights and angles under
    // a 16-bit x), all of one type. TensorRT has chosen inOut[0, pos) before it asks about pos.
    return (desc.type == xType || desc.type == DataType::kFLOAT) && (pos == 1 || desc.type == inOut[1].desc.type);
}

size_t PolyAggregatePlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /* outputs */, int32_t /* nbOutputs */) const noexcept
{
    // TensorRT allocates this once for the profile and enqueue cannot learn its size, so it must
    // serve every problem of the profile: the largest valid one (configurePlugin refused a
    // profile whose maximum is invalid for another reason than its tokens).
    int32_t dtype = 0;
    if (inputs == nullptr || nbInputs < 1 || inputs[0].max.nbDims != 3 || !toPomDType(inputs[0].desc.type, dtype))
    {
        return 0;
    }
    PomPolyAggregateDesc const d = largestValidProblem(mConfig, inputs[0].max, dtype);
    return pomPolyAggregateValidate(&d) == POM_SUCCESS ? pomPolyAggregateWorkspaceSize(&d) : 0;
}

int32_t PolyAggregatePlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /* out */, int32_t nbOutputs) noexcept
{
    int32_t dtype = 0;
    if (in == nullptr || nbInputs != mConfig.nbInputs() || nbOutputs != 1 || in[0].dims.nbDims != 3
        || !toPomDType(in[0].type, dtype))
    {
        logError("onShapeChange: unexpected inputs");
        return -1;
    }
    PomPolyAggregateDesc const d = describe(mConfig, in[0].dims, dtype);
    int const status = pomPolyAggregateValidate(&d);
    if (status != POM_SUCCESS)
    {
        logError(std::string{"onShapeChange: "} + pomPolyAggregateStatusString(status));
        return -1;
    }
    // The kernels index coeff and mask with x's dims; TensorRT checks only dims that share a name.
    if (mConfig.variant == POM_VARIANT_V2)
    {
        nvinfer1::Dims const& coeff = in[1].dims;
        if (coeff.nbDims != 2 || coeff.d[0] != d.channels || coeff.d[1] != d.degree)
        {
            logError("onShapeChange: coeff must be (channels, degree) = (" + std::to_string(d.channels) + ", "
                + std::to_string(d.degree) + ")");
            return -1;
        }
    }
    if (mConfig.mode == POM_MODE_MASKED)
    {
        nvinfer1::Dims const& mask = in[mConfig.cosIndex() - 1].dims;
        if (mask.nbDims != 2 || mask.d[0] != d.batch || mask.d[1] != d.tokens)
        {
            logError("onShapeChange: mask must be (batch, tokens) = (" + std::to_string(d.batch) + ", "
                + std::to_string(d.tokens) + ")");
            return -1;
        }
    }
    if (mConfig.rope != POM_ROPE_NONE)
    {
        nvinfer1::Dims const& cos = in[mConfig.cosIndex()].dims;
        nvinfer1::Dims const& sin = in[mConfig.cosIndex() + 1].dims;
        bool const sameShape = cos.nbDims == 3 && sin.nbDims == 3 && cos.d[0] == sin.d[0] && cos.d[1] == sin.d[1]
            && cos.d[2] == sin.d[2];
        if (!sameShape || (cos.d[0] != 1 && cos.d[0] != d.batch) || cos.d[1] != d.tokens || cos.d[2] != d.channels / 2)
        {
            logError("onShapeChange: cos and sin must both be (batch or 1, tokens, channels / 2)");
            return -1;
        }
    }
    return 0;
}

int32_t PolyAggregatePlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* /* outputDesc */, void const* const* inputs, void* const* outputs,
    void* workspace, cudaStream_t stream) noexcept
{
    int32_t dtype = 0;
    if (!toPomDType(inputDesc[0].type, dtype))
    {
        logError("enqueue: unsupported data type");
        return -1;
    }
    PomPolyAggregateDesc d = describe(mConfig, inputDesc[0].dims, dtype);
    // supportsFormatCombination gave the side inputs (from input 1 on) one type: x's or float32.
    d.sideInputsFloat32 = mConfig.nbInputs() > 1 && inputDesc[1].type == DataType::kFLOAT ? 1 : 0;
    bool const rope = mConfig.rope != POM_ROPE_NONE;
    int32_t const cosIndex = mConfig.cosIndex();
    // Tables of batch 1 are shared by the batch rows (onShapeChange checked the shapes).
    d.ropePerBatch = rope && inputDesc[cosIndex].dims.d[0] != 1 ? 1 : 0;
    void const* coeff = mConfig.variant == POM_VARIANT_V2 ? inputs[1] : nullptr;
    void const* mask = mConfig.mode == POM_MODE_MASKED ? inputs[cosIndex - 1] : nullptr;
    // TensorRT gives the workspace getWorkspaceSize asked for, sized for the profile's largest
    // valid problem, which bounds this one (enqueue is not told its size).
    int const status = pomPolyAggregateLaunchEx(&d, inputs[0], coeff, mask, rope ? inputs[cosIndex] : nullptr,
        rope ? inputs[cosIndex + 1] : nullptr, outputs[0], workspace, pomPolyAggregateWorkspaceSize(&d), stream);
    if (status != POM_SUCCESS)
    {
        logError(std::string{"enqueue: "} + pomPolyAggregateStatusString(status));
        return -1;
    }
    return 0;
}

nvinfer1::IPluginV3* PolyAggregatePlugin::attachToContext(nvinfer1::IPluginResourceContext* /* context */) noexcept
{
    return clone();
}

PluginFieldCollection const* PolyAggregatePlugin::getFieldsToSerialize() noexcept
{
    return &mSerialized;
}

PolyAggregatePluginCreator::PolyAggregatePluginCreator()
    : mFields{
        PluginField{kFieldVariant, nullptr, PluginFieldType::kCHAR, 0},
        PluginField{kFieldDegree, nullptr, PluginFieldType::kINT32, 1},
        PluginField{kFieldMode, nullptr, PluginFieldType::kCHAR, 0},
        PluginField{kFieldFrameTokens, nullptr, PluginFieldType::kINT32, 1},
        PluginField{kFieldRope, nullptr, PluginFieldType::kCHAR, 0},
    }
{
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

char const* PolyAggregatePluginCreator::getPluginName() const noexcept
{
    return kPluginName;
}

char const* PolyAggregatePluginCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* PolyAggregatePluginCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

PluginFieldCollection const* PolyAggregatePluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

nvinfer1::IPluginV3* PolyAggregatePluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /* phase */) noexcept
{
    try
    {
        PolyAggregateConfig config;
        std::string error;
        if (!parsePolyAggregateFields(fc, config, error))
        {
            logError(std::string{"cannot create plugin '"} + (name != nullptr ? name : "") + "': " + error);
            return nullptr;
        }
        return new PolyAggregatePlugin(config, kPluginNamespace);
    }
    catch (std::exception const& e)
    {
        logError(std::string{"createPlugin failed: "} + e.what());
    }
    return nullptr;
}

namespace
{

PolyAggregatePluginCreator& creatorInstance()
{
    static PolyAggregatePluginCreator creator;
    return creator;
}

} // namespace
} // namespace pom

//! Entry points of IPluginRegistry::loadLibrary (trtexec --dynamicPlugins, Python
//! registry.load_library, engines that embed the library): the one way this library hands out
//! its creator, so that the registry that loads it (global, a runtime's local one, a lean
//! runtime's) owns it and deregisterLibrary removes it. Loading by a plain dlopen is the job of
//! the separate libpom_deploy_plugins_autoregister.so (polyAggregateAutoRegister.cpp).
extern "C" POM_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&pom::creatorInstance()};
    nbCreators = 1;
    return creators;
}

extern "C" POM_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    pom::gLoggerFinder = finder;
}
