/*
 * Host-side test of the PolyAggregate TensorRT adapter: everything a builder calls before
 * enqueue, without a GPU and without TensorRT's libraries (headers only). TensorRT's
 * IExprBuilder is a thin wrapper over an internal interface (apiv::VExprBuilder); a small
 * fake of that interface stands in for the builder's shape expressions.
 *
 * Then enqueue, the way TensorRT runs the plugin (a runtime-phase plugin, onShapeChange, the
 * workspace sized for the profile's max shape), compared bit for bit with a direct launch of
 * the kernels through their C ABI. It runs on a CUDA device, or on the CPU when built against
 * the host emulation (plugins/tests/cuda_host), and is skipped when there is neither.
 */
#include "polyAggregatePlugin.h"

#include <NvInferImpl.h>
#include <NvInferVersion.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <iostream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

using namespace nvinfer1;

namespace
{

int gFailures = 0;

#define CHECK(condition)                                                                                               \
    do                                                                                                                 \
    {                                                                                                                  \
        if (!(condition))                                                                                              \
        {                                                                                                              \
            std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #condition << std::endl;                    \
            ++gFailures;                                                                                               \
        }                                                                                                              \
    } while (0)

//! A dimension expression: a known constant or an opaque (runtime) value.
class FakeDimExprImpl final : public apiv::VDimensionExpr
{
public:
    FakeDimExprImpl(bool constant, int64_t value)
        : mConstant(constant)
        , mValue(value)
    {
    }
    bool isConstant() const override
    {
        return mConstant;
    }
    int64_t getConstantValue() const override
    {
        return mConstant ? mValue : -1;
    }
    bool isSizeTensor() const override
    {
        return false;
    }

private:
    bool mConstant;
    int64_t mValue;
};

class FakeDimExpr final : public IDimensionExpr
{
public:
    FakeDimExpr(bool constant, int64_t value)
        : mImplStorage(constant, value)
    {
        mImpl = &mImplStorage;
    }

private:
    FakeDimExprImpl mImplStorage;
};

class FakeExprBuilderImpl final : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override
    {
        return make(true, value);
    }
    IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return make(false, -1);
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return make(false, -1);
    }
    IDimensionExpr const* make(bool isConstant, int64_t value)
    {
        mExprs.push_back(std::make_unique<FakeDimExpr>(isConstant, value));
        return mExprs.back().get();
    }

private:
    std::deque<std::unique_ptr<FakeDimExpr>> mExprs;
};

class FakeExprBuilder final : public IExprBuilder
{
public:
    FakeExprBuilder()
    {
        mImpl = &mImplStorage;
    }
    IDimensionExpr const* runtimeDim()
    {
        return mImplStorage.make(false, -1);
    }

private:
    FakeExprBuilderImpl mImplStorage;
};

//! Plugin fields as the ONNX parser builds them (strings are kCHAR with the NUL counted).
struct Fields
{
    std::vector<std::string> strings;
    std::vector<int32_t> ints;
    std::vector<PluginField> fields;
    PluginFieldCollection collection{};

    Fields(std::string const& variant, int32_t degree, std::string const& mode)
    {
        strings.reserve(16);
        ints.reserve(16);
        addString("variant", variant);
        addInt("degree", degree);
        addString("mode", mode);
    }
    Fields& addString(char const* name, std::string const& value)
    {
        strings.push_back(value);
        fields.emplace_back(name, strings.back().c_str(), PluginFieldType::kCHAR,
            static_cast<int32_t>(strings.back().size() + 1));
        return *this;
    }
    Fields& addInt(char const* name, int32_t value)
    {
        ints.push_back(value);
        fields.emplace_back(name, &ints.back(), PluginFieldType::kINT32, 1);
        return *this;
    }
    PluginFieldCollection const* get()
    {
        collection.nbFields = static_cast<int32_t>(fields.size());
        collection.fields = fields.data();
        return &collection;
    }
};

IPluginCreatorV3One* findCreator()
{
    int32_t count = 0;
    IPluginCreatorInterface* const* creators = getCreators(count);
    CHECK(creators != nullptr);
    // The one creator, every time it is asked (loadLibrary of each registry that loads it).
    CHECK(count == 1);
    int32_t again = 0;
    IPluginCreatorInterface* const* second = getCreators(again);
    CHECK(again == 1 && second != nullptr && creators != nullptr && second[0] == creators[0]);
    return count == 1 ? static_cast<IPluginCreatorV3One*>(creators[0]) : nullptr;
}

std::unique_ptr<IPluginV3> create(IPluginCreatorV3One& creator, PluginFieldCollection const* fc,
    TensorRTPhase phase = TensorRTPhase::kBUILD)
{
    return std::unique_ptr<IPluginV3>(creator.createPlugin("poly_aggregate_node", fc, phase));
}

IPluginV3OneBuild* build(IPluginV3& plugin)
{
    return static_cast<IPluginV3OneBuild*>(plugin.getCapabilityInterface(PluginCapabilityType::kBUILD));
}

DynamicPluginTensorDesc tensor(DataType type, std::vector<int64_t> const& dims,
    TensorFormat format = TensorFormat::kLINEAR)
{
    DynamicPluginTensorDesc t{};
    t.desc.type = type;
    t.desc.format = format;
    t.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        t.desc.dims.d[i] = dims[i];
    }
    t.min = t.opt = t.max = t.desc.dims;
    return t;
}

void testCreator(IPluginCreatorV3One& creator)
{
    CHECK(std::strcmp(creator.getPluginName(), "PolyAggregate") == 0);
    CHECK(std::strcmp(creator.getPluginVersion(), "1") == 0);
    CHECK(std::strcmp(creator.getPluginNamespace(), "pom_deploy") == 0);
    CHECK(std::strcmp(creator.getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
    PluginFieldCollection const* names = creator.getFieldNames();
    CHECK(names != nullptr && names->nbFields == 5);
    if (names != nullptr && names->nbFields == 5)
    {
        CHECK(std::strcmp(names->fields[0].name, "variant") == 0 && names->fields[0].type == PluginFieldType::kCHAR);
        CHECK(std::strcmp(names->fields[1].name, "degree") == 0 && names->fields[1].type == PluginFieldType::kINT32);
        CHECK(std::strcmp(names->fields[2].name, "mode") == 0 && names->fields[2].type == PluginFieldType::kCHAR);
        CHECK(std::strcmp(names->fields[3].name, "frame_tokens") == 0
            && names->fields[3].type == PluginFieldType::kINT32);
        CHECK(std::strcmp(names->fields[4].name, "rope") == 0 && names->fields[4].type == PluginFieldType::kCHAR);
    }
}

//! One configuration of the op: the node's attributes, and whether its cos/sin have batch B.
struct OpConfig
{
    std::string variant;
    std::string mode;
    std::string rope{"none"};
    int32_t frameTokens{0};
    bool tablesPerBatch{false};

    int32_t nbInputs() const
    {
        return 1 + (variant == "v2") + (mode == "masked") + (rope != "none" ? 2 : 0);
    }
    //! Fields as the ONNX parser passes them; frame_tokens and rope only when not default, as in
    //! a node that leaves them out.
    void addOptional(Fields& fields) const;
    PomPolyAggregateDesc desc(
        int64_t batch, int64_t tokens, int64_t channels, int32_t degree, int32_t dtype, bool sideFloat32 = false) const
    {
        PomPolyAggregateDesc d{};
        d.batch = batch;
        d.tokens = tokens;
        d.channels = channels;
        d.degree = degree;
        d.variant = variant == "v1" ? POM_VARIANT_V1 : POM_VARIANT_V2;
        d.mode = mode == "mean" ? POM_MODE_MEAN : (mode == "causal" ? POM_MODE_CAUSAL : POM_MODE_MASKED);
        d.dtype = dtype;
        d.frameTokens = frameTokens;
        d.rope = rope == "none" ? POM_ROPE_NONE : (rope == "1d" ? POM_ROPE_1D : POM_ROPE_2D);
        d.ropePerBatch = tablesPerBatch ? 1 : 0;
        d.sideInputsFloat32 = sideFloat32 ? 1 : 0;
        return d;
    }
    std::string name() const
    {
        return variant + " " + mode + " rope " + rope + " frames " + std::to_string(frameTokens)
            + (tablesPerBatch ? " tables per batch" : "");
    }
};

void OpConfig::addOptional(Fields& fields) const
{
    if (frameTokens != 0)
    {
        fields.addInt("frame_tokens", frameTokens);
    }
    if (rope != "none")
    {
        fields.addString("rope", rope);
    }
}

void testShapesAndTypes(IPluginCreatorV3One& creator, OpConfig const& op)
{
    std::string const& variant = op.variant;
    std::string const& mode = op.mode;
    bool const rope = op.rope != "none";
    Fields fields(variant, 2, mode);
    op.addOptional(fields);
    auto plugin = create(creator, fields.get());
    CHECK(plugin != nullptr);
    if (!plugin)
    {
        return;
    }
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    IPluginV3OneBuild* b = build(*plugin);
    CHECK(core != nullptr && b != nullptr && runtime != nullptr);
    CHECK(std::strcmp(core->getPluginName(), "PolyAggregate") == 0);
    CHECK(std::strcmp(core->getPluginVersion(), "1") == 0);
    CHECK(std::strcmp(core->getPluginNamespace(), "pom_deploy") == 0);
    CHECK(b->getNbOutputs() == 1);

    int32_t const nbInputs = op.nbInputs();
    // Output type follows x for every supported type.
    for (DataType type : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        std::vector<DataType> in(nbInputs, type);
        DataType out = DataType::kINT8;
        CHECK(b->getOutputDataTypes(&out, 1, in.data(), nbInputs) == 0 && out == type);
    }
    DataType out{};
    std::vector<DataType> wrongCount(nbInputs + 1, DataType::kFLOAT);
    CHECK(b->getOutputDataTypes(&out, 1, wrongCount.data(), nbInputs + 1) != 0);

    // Shapes: batch and tokens are runtime dims, channels a constant.
    FakeExprBuilder exprs;
    DimsExprs inputs[5]{};
    inputs[0].nbDims = 3;
    inputs[0].d[0] = exprs.runtimeDim();
    inputs[0].d[1] = exprs.runtimeDim();
    inputs[0].d[2] = exprs.constant(8);
    int32_t const firstTable = rope ? nbInputs - 2 : nbInputs;
    for (int32_t i = 1; i < nbInputs; ++i)
    {
        inputs[i].nbDims = i < firstTable ? 2 : 3;
        inputs[i].d[0] = i < firstTable || op.tablesPerBatch ? exprs.runtimeDim() : exprs.constant(1);
        inputs[i].d[1] = exprs.runtimeDim();
        inputs[i].d[2] = exprs.constant(4);
    }
    DimsExprs output{};
    CHECK(b->getOutputShapes(inputs, nbInputs, nullptr, 0, &output, 1, exprs) == 0);
    CHECK(output.nbDims == 3);
    CHECK(output.d[0] == inputs[0].d[0]);
    CHECK(output.d[2] == inputs[0].d[2]);
    if (mode == "causal")
    {
        CHECK(output.d[1] == inputs[0].d[1]);
    }
    else
    {
        CHECK(output.d[1] != nullptr && output.d[1]->isConstant() && output.d[1]->getConstantValue() == 1);
    }
    int32_t const wrongNbInputs = nbInputs == 1 ? 2 : nbInputs - 1;
    CHECK(b->getOutputShapes(inputs, wrongNbInputs, nullptr, 0, &output, 1, exprs) != 0);

    // Formats: linear fp32/fp16/bf16, every tensor (cos and sin too) of x's type; the float32
    // side inputs are checked below.
    int64_t const tokens = op.frameTokens > 0 ? 2 * op.frameTokens : 5;
    std::vector<DynamicPluginTensorDesc> inOut;
    inOut.push_back(tensor(DataType::kHALF, {2, tokens, 8}));
    if (variant == "v2")
    {
        inOut.push_back(tensor(DataType::kHALF, {8, 2}));
    }
    if (mode == "masked")
    {
        inOut.push_back(tensor(DataType::kHALF, {2, tokens}));
    }
    if (rope)
    {
        inOut.push_back(tensor(DataType::kHALF, {op.tablesPerBatch ? 2 : 1, tokens, 4}));
        inOut.push_back(tensor(DataType::kHALF, {op.tablesPerBatch ? 2 : 1, tokens, 4}));
    }
    inOut.push_back(tensor(DataType::kHALF, {2, mode == "causal" ? tokens : 1, 8}));
    int32_t const nb = static_cast<int32_t>(inOut.size());
    for (int32_t pos = 0; pos < nb; ++pos)
    {
        CHECK(b->supportsFormatCombination(pos, inOut.data(), nbInputs, 1));
    }
    inOut[0].desc.type = DataType::kINT8;
    CHECK(!b->supportsFormatCombination(0, inOut.data(), nbInputs, 1));
    for (DataType type : {DataType::kFLOAT, DataType::kBF16})
    {
        inOut[0].desc.type = type;
        CHECK(b->supportsFormatCombination(0, inOut.data(), nbInputs, 1));
        CHECK(!b->supportsFormatCombination(nb - 1, inOut.data(), nbInputs, 1)); // output still kHALF
    }
    inOut[0].desc.type = DataType::kHALF;
    inOut[0].desc.format = TensorFormat::kHWC8;
    CHECK(!b->supportsFormatCombination(0, inOut.data(), nbInputs, 1));
    inOut[0].desc.format = TensorFormat::kLINEAR;
    if (nbInputs > 1)
    {
        // Side inputs (coeff, mask, cos, sin) all float32 under a 16-bit x: accepted, output in x's type.
        for (DataType type : {DataType::kHALF, DataType::kBF16})
        {
            for (int32_t pos = 0; pos < nb; ++pos)
            {
                inOut[pos].desc.type = pos == 0 || pos >= nbInputs ? type : DataType::kFLOAT;
                CHECK(b->supportsFormatCombination(pos, inOut.data(), nbInputs, 1));
            }
            inOut[nb - 1].desc.type = DataType::kFLOAT;
            CHECK(!b->supportsFormatCombination(nb - 1, inOut.data(), nbInputs, 1)); // y is x's type
            // A third type (bf16 under fp16 x, fp16 under bf16 x) is refused.
            inOut[1].desc.type = type == DataType::kHALF ? DataType::kBF16 : DataType::kHALF;
            CHECK(!b->supportsFormatCombination(1, inOut.data(), nbInputs, 1));
            if (nbInputs > 2)
            {
                // Mixed side types are refused, either way round.
                inOut[1].desc.type = DataType::kFLOAT;
                inOut[nbInputs - 1].desc.type = type;
                CHECK(!b->supportsFormatCombination(nbInputs - 1, inOut.data(), nbInputs, 1));
                inOut[1].desc.type = type;
                inOut[nbInputs - 1].desc.type = DataType::kFLOAT;
                CHECK(!b->supportsFormatCombination(nbInputs - 1, inOut.data(), nbInputs, 1));
            }
        }
        // A 16-bit side input under a float32 x is refused (it would lose precision for nothing).
        inOut[0].desc.type = DataType::kFLOAT;
        inOut[1].desc.type = DataType::kHALF;
        CHECK(!b->supportsFormatCombination(1, inOut.data(), nbInputs, 1));
        inOut[1].desc.type = DataType::kFLOAT;
        CHECK(b->supportsFormatCombination(1, inOut.data(), nbInputs, 1));
        for (auto& t : inOut)
        {
            t.desc.type = DataType::kHALF;
        }
    }
    if (rope)
    {
        // sin of another type than cos (and x), or not linear, is refused.
        inOut[firstTable + 1].desc.type = DataType::kFLOAT;
        CHECK(!b->supportsFormatCombination(firstTable + 1, inOut.data(), nbInputs, 1));
        inOut[firstTable + 1].desc.type = DataType::kHALF;
        inOut[firstTable].desc.format = TensorFormat::kCHW32;
        CHECK(!b->supportsFormatCombination(firstTable, inOut.data(), nbInputs, 1));
        inOut[firstTable].desc.format = TensorFormat::kLINEAR;
    }

    // configurePlugin: consistent shapes pass; a wrong input count fails.
    CHECK(b->configurePlugin(inOut.data(), nbInputs, inOut.data() + nbInputs, 1) == 0);
    CHECK(b->configurePlugin(inOut.data(), nbInputs + 1, inOut.data() + nbInputs, 1) != 0);
    if (rope)
    {
        // Tables of the wrong width (not C/2), or of another batch than 1 or B, are refused.
        inOut[firstTable].desc.dims.d[2] = 8;
        CHECK(b->configurePlugin(inOut.data(), nbInputs, inOut.data() + nbInputs, 1) != 0);
        inOut[firstTable].desc.dims.d[2] = 4;
        inOut[firstTable + 1].desc.dims.d[0] = 3;
        CHECK(b->configurePlugin(inOut.data(), nbInputs, inOut.data() + nbInputs, 1) != 0);
        inOut[firstTable + 1].desc.dims.d[0] = op.tablesPerBatch ? 2 : 1;
    }
    if (op.frameTokens > 0)
    {
        inOut[0].desc.dims.d[1] = tokens + 1; // not a multiple of frame_tokens
        CHECK(b->configurePlugin(inOut.data(), nbInputs, inOut.data() + nbInputs, 1) != 0);
        inOut[0].desc.dims.d[1] = tokens;
    }

    // onShapeChange: coeff (C, K) and mask (B, N) must fit x and the degree, which the kernels
    // index them with (TensorRT only checks dims that share a name in the ONNX).
    std::vector<PluginTensorDesc> shapes;
    for (DynamicPluginTensorDesc const& t : inOut)
    {
        shapes.push_back(t.desc);
    }
    CHECK(runtime->onShapeChange(shapes.data(), nbInputs, &shapes[nbInputs], 1) == 0);
    if (variant == "v2")
    {
        for (int32_t axis : {0, 1})
        {
            shapes[1].dims.d[axis] += 1;
            CHECK(runtime->onShapeChange(shapes.data(), nbInputs, &shapes[nbInputs], 1) != 0);
            shapes[1].dims.d[axis] -= 1;
        }
    }
    if (mode == "masked")
    {
        int32_t const maskIndex = variant == "v2" ? 2 : 1;
        for (int32_t axis : {0, 1})
        {
            shapes[maskIndex].dims.d[axis] += 1;
            CHECK(runtime->onShapeChange(shapes.data(), nbInputs, &shapes[nbInputs], 1) != 0);
            shapes[maskIndex].dims.d[axis] -= 1;
        }
    }
    CHECK(runtime->onShapeChange(shapes.data(), nbInputs, &shapes[nbInputs], 1) == 0);

    // Workspace: the C ABI's size for the profile's max shape (for frames, its largest multiple
    // of frame_tokens: the valid shape that needs the most).
    inOut[0].max.d[0] = 4;
    inOut[0].max.d[1] = 4099;
    int64_t const maxTokens = op.frameTokens > 0 ? 4099 / op.frameTokens * op.frameTokens : 4099;
    PomPolyAggregateDesc const d = op.desc(4, maxTokens, 8, 2, POM_DTYPE_FLOAT16);
    size_t const expected = pomPolyAggregateWorkspaceSize(&d);
    CHECK(expected > 0);
    CHECK(b->getWorkspaceSize(inOut.data(), nbInputs, inOut.data() + nbInputs, 1) == expected);
    // A maximum whose channels are invalid (here odd: not divisible by the degree 2 (v1) or by
    // the rope's 2 or 4) while the profile's other shapes are valid leaves no safe workspace:
    // configurePlugin refuses the profile.
    CHECK(b->configurePlugin(inOut.data(), nbInputs, inOut.data() + nbInputs, 1) == 0);
    if (variant == "v1" || rope)
    {
        inOut[0].max.d[2] = 9;
        CHECK(b->configurePlugin(inOut.data(), nbInputs, inOut.data() + nbInputs, 1) != 0);
        inOut[0].max.d[2] = 8;
    }

    // Serialization round trip, as at engine deserialization (kRUNTIME), and clone.
    PluginFieldCollection const* serialized = runtime->getFieldsToSerialize();
    CHECK(serialized != nullptr && serialized->nbFields == 5);
    auto restored = create(creator, serialized, TensorRTPhase::kRUNTIME);
    CHECK(restored != nullptr);
    std::unique_ptr<IPluginV3> cloned(plugin->clone());
    CHECK(cloned != nullptr);
    for (IPluginV3* other : {restored.get(), cloned.get()})
    {
        if (other == nullptr)
        {
            continue;
        }
        auto const& original = static_cast<pom::PolyAggregatePlugin&>(*plugin).config();
        auto const& copy = static_cast<pom::PolyAggregatePlugin&>(*other).config();
        CHECK(copy.variant == original.variant && copy.degree == original.degree && copy.mode == original.mode
            && copy.frameTokens == op.frameTokens && copy.rope == d.rope);
        auto* otherRuntime
            = static_cast<IPluginV3OneRuntime*>(other->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        PluginFieldCollection const* again = otherRuntime->getFieldsToSerialize();
        CHECK(again->nbFields == 5 && std::strcmp(static_cast<char const*>(again->fields[0].data), variant.c_str()) == 0
            && std::strcmp(static_cast<char const*>(again->fields[2].data), mode.c_str()) == 0
            && *static_cast<int32_t const*>(again->fields[1].data) == 2
            && *static_cast<int32_t const*>(again->fields[3].data) == op.frameTokens
            && std::strcmp(static_cast<char const*>(again->fields[4].data), op.rope.c_str()) == 0);
    }
    std::unique_ptr<IPluginV3> attached(runtime->attachToContext(nullptr));
    CHECK(attached != nullptr);
}

void testFieldVariants(IPluginCreatorV3One& creator)
{
    // Strings without the terminating NUL counted, and the parser-level attributes, are accepted.
    Fields noNul("v1", 3, "causal");
    noNul.fields[0].length = 2;
    noNul.fields[2].length = 6;
    auto old = create(creator, noNul.get());
    CHECK(old != nullptr);
    // A node written before frame_tokens and rope existed: both off.
    CHECK(old != nullptr && static_cast<pom::PolyAggregatePlugin&>(*old).config().frameTokens == 0
        && static_cast<pom::PolyAggregatePlugin&>(*old).config().rope == POM_ROPE_NONE);
    int64_t const frames64 = 64;
    Fields int64Frames("v2", 2, "causal");
    int64Frames.fields.emplace_back("frame_tokens", &frames64, PluginFieldType::kINT64, 1);
    int64Frames.addString("rope", "2d");
    auto framed = create(creator, int64Frames.get());
    CHECK(framed != nullptr && static_cast<pom::PolyAggregatePlugin&>(*framed).config().frameTokens == 64
        && static_cast<pom::PolyAggregatePlugin&>(*framed).config().rope == POM_ROPE_2D);
    CHECK(create(creator, Fields("v1", 2, "mean").addString("rope", "none").addInt("frame_tokens", 0).get())
        != nullptr);
    Fields withParserAttributes("v2", 4, "masked");
    withParserAttributes.addString("plugin_version", "1").addString("plugin_namespace", "pom_deploy");
    CHECK(create(creator, withParserAttributes.get()) != nullptr);
    int64_t const degree64 = 5;
    Fields int64Degree("v2", 1, "mean");
    int64Degree.fields[1] = PluginField("degree", &degree64, PluginFieldType::kINT64, 1);
    auto plugin = create(creator, int64Degree.get());
    CHECK(plugin != nullptr && static_cast<pom::PolyAggregatePlugin&>(*plugin).config().degree == 5);
}

void testBadFields(IPluginCreatorV3One& creator)
{
    CHECK(create(creator, Fields("v3", 2, "mean").get()) == nullptr);
    CHECK(create(creator, Fields("v1", 2, "sum").get()) == nullptr);
    CHECK(create(creator, Fields("v1", 0, "mean").get()) == nullptr);
    CHECK(create(creator, Fields("v1", POM_MAX_DEGREE + 1, "mean").get()) == nullptr);
    CHECK(create(creator, Fields("v1", 2, "mean").addInt("expand", 2).get()) == nullptr);
    Fields missing("v1", 2, "mean");
    missing.fields.pop_back();
    CHECK(create(creator, missing.get()) == nullptr);
    float const floatDegree = 2.0F;
    Fields wrongType("v1", 2, "mean");
    wrongType.fields[1] = PluginField("degree", &floatDegree, PluginFieldType::kFLOAT32, 1);
    CHECK(create(creator, wrongType.get()) == nullptr);
    Fields stringAsInt("v1", 2, "mean");
    stringAsInt.fields[0].type = PluginFieldType::kINT8;
    CHECK(create(creator, stringAsInt.get()) == nullptr);
    CHECK(create(creator, nullptr) == nullptr);
    CHECK(create(creator, Fields("v2", 2, "mean").addString("rope", "3d").get()) == nullptr);
    CHECK(create(creator, Fields("v2", 2, "mean").addInt("rope", 1).get()) == nullptr);
    CHECK(create(creator, Fields("v1", 2, "mean").addString("rope", "1d").get()) == nullptr); // RoPE is v2's
    CHECK(create(creator, Fields("v2", POM_MAX_ROPE_DEGREE + 1, "mean").addString("rope", "1d").get()) == nullptr);
    CHECK(create(creator, Fields("v2", 2, "mean").addInt("frame_tokens", 4).get()) == nullptr); // needs causal
    CHECK(create(creator, Fields("v2", 2, "causal").addInt("frame_tokens", -1).get()) == nullptr);
    CHECK(create(creator, Fields("v2", 2, "causal").addString("frame_tokens", "4").get()) == nullptr);

    // v1 with channels not divisible by degree is refused when the shape is known.
    Fields v1("v1", 3, "mean");
    auto plugin = create(creator, v1.get());
    CHECK(plugin != nullptr);
    if (plugin)
    {
        std::vector<DynamicPluginTensorDesc> io{tensor(DataType::kFLOAT, {2, 5, 8}), tensor(DataType::kFLOAT, {2, 1, 8})};
        CHECK(build(*plugin)->configurePlugin(io.data(), 1, io.data() + 1, 1) != 0);
    }
}

//! 16-bit encodings of values that are exact in both formats (multiples of 1/16 within +-8).
uint16_t halfBits(float value)
{
    if (value == 0.0F)
    {
        return 0;
    }
    int exponent = 0;
    float const fraction = std::frexp(std::fabs(value), &exponent); // |value| = fraction * 2^exponent
    auto const mantissa = static_cast<uint16_t>((fraction * 2.0F - 1.0F) * 1024.0F);
    return static_cast<uint16_t>((value < 0.0F ? 0x8000U : 0U) | ((exponent - 1 + 15) << 10) | mantissa);
}

uint16_t bfloat16Bits(float value)
{
    uint32_t bits = 0;
    std::memcpy(&bits, &value, sizeof(bits));
    return static_cast<uint16_t>(bits >> 16);
}

//! A device buffer filled from host bytes, freed on scope exit.
struct DeviceBuffer
{
    void* ptr = nullptr;
    size_t bytes = 0;

    explicit DeviceBuffer(size_t size)
        : bytes(size)
    {
        CHECK(cudaMalloc(&ptr, bytes == 0 ? 1 : bytes) == cudaSuccess);
    }
    DeviceBuffer(DeviceBuffer const&) = delete;
    DeviceBuffer& operator=(DeviceBuffer const&) = delete;
    ~DeviceBuffer()
    {
        cudaFree(ptr);
    }
    void upload(std::vector<uint8_t> const& host)
    {
        CHECK(cudaMemcpy(ptr, host.data(), host.size(), cudaMemcpyHostToDevice) == cudaSuccess);
    }
    std::vector<uint8_t> download() const
    {
        std::vector<uint8_t> host(bytes);
        CHECK(cudaMemcpy(host.data(), ptr, bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
        return host;
    }
};

//! `count` values of `type`, from a small deterministic sequence of exact values.
std::vector<uint8_t> tensorBytes(DataType type, int64_t count, int64_t seed, bool binary)
{
    size_t const elementBytes = type == DataType::kFLOAT ? 4 : 2;
    std::vector<uint8_t> bytes(static_cast<size_t>(count) * elementBytes);
    for (int64_t i = 0; i < count; ++i)
    {
        int64_t const step = (i * 37 + seed * 11) % 97;
        float const value = binary ? static_cast<float>(step % 3 != 0) : static_cast<float>(step - 48) / 16.0F;
        if (type == DataType::kFLOAT)
        {
            std::memcpy(&bytes[i * 4], &value, 4);
        }
        else
        {
            uint16_t const bits = type == DataType::kHALF ? halfBits(value) : bfloat16Bits(value);
            std::memcpy(&bytes[i * 2], &bits, 2);
        }
    }
    return bytes;
}

int32_t pomDType(DataType type)
{
    if (type == DataType::kFLOAT)
    {
        return POM_DTYPE_FLOAT32;
    }
    return type == DataType::kHALF ? POM_DTYPE_FLOAT16 : POM_DTYPE_BFLOAT16;
}

PluginTensorDesc plainDesc(DataType type, std::vector<int64_t> const& dims)
{
    return tensor(type, dims).desc;
}

//! enqueue == the C ABI launch, bit for bit. sideType: of coeff, mask, cos and sin (x's type, or
//! kFLOAT under a 16-bit x).
void testEnqueue(IPluginCreatorV3One& creator, OpConfig const& op, DataType type, DataType sideType)
{
    // A shape inside a larger profile: blocks cut short at the token and channel ends.
    std::string const& variant = op.variant;
    std::string const& mode = op.mode;
    int64_t const batch = 2;
    int64_t const tokens = 300;
    int64_t const channels = 24;
    int32_t const degree = 3;
    std::vector<int64_t> const xDims{batch, tokens, channels};
    std::vector<int64_t> const yDims{batch, mode == "causal" ? tokens : 1, channels};

    Fields fields(variant, degree, mode);
    op.addOptional(fields);
    auto plugin = create(creator, fields.get(), TensorRTPhase::kRUNTIME);
    CHECK(plugin != nullptr);
    if (!plugin)
    {
        return;
    }
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));

    std::vector<PluginTensorDesc> in{plainDesc(type, xDims)};
    std::vector<DynamicPluginTensorDesc> profile{tensor(type, xDims)};
    profile[0].max.d[0] = 4;
    profile[0].max.d[1] = 1000;
    std::vector<std::unique_ptr<DeviceBuffer>> inputs;
    std::vector<uint8_t> const x = tensorBytes(type, batch * tokens * channels, 1, false);
    inputs.push_back(std::make_unique<DeviceBuffer>(x.size()));
    inputs.back()->upload(x);
    if (variant == "v2")
    {
        std::vector<uint8_t> const coeff = tensorBytes(sideType, channels * degree, 2, false);
        in.push_back(plainDesc(sideType, {channels, degree}));
        profile.push_back(tensor(sideType, {channels, degree}));
        inputs.push_back(std::make_unique<DeviceBuffer>(coeff.size()));
        inputs.back()->upload(coeff);
    }
    if (mode == "masked")
    {
        std::vector<uint8_t> const mask = tensorBytes(sideType, batch * tokens, 3, true);
        in.push_back(plainDesc(sideType, {batch, tokens}));
        profile.push_back(tensor(sideType, {4, 1000}));
        inputs.push_back(std::make_unique<DeviceBuffer>(mask.size()));
        inputs.back()->upload(mask);
    }
    if (op.rope != "none")
    {
        int64_t const tableBatch = op.tablesPerBatch ? batch : 1;
        for (int64_t seed : {4, 5}) // cos, then sin
        {
            std::vector<uint8_t> const table = tensorBytes(sideType, tableBatch * tokens * channels / 2, seed, false);
            in.push_back(plainDesc(sideType, {tableBatch, tokens, channels / 2}));
            profile.push_back(tensor(sideType, {tableBatch, tokens, channels / 2}));
            profile.back().max.d[0] = op.tablesPerBatch ? 4 : 1;
            profile.back().max.d[1] = 1000;
            inputs.push_back(std::make_unique<DeviceBuffer>(table.size()));
            inputs.back()->upload(table);
        }
    }
    PluginTensorDesc const out = plainDesc(type, yDims);
    int32_t const nbInputs = static_cast<int32_t>(in.size());
    size_t const elementBytes = type == DataType::kFLOAT ? 4 : 2;
    size_t const outBytes = static_cast<size_t>(yDims[0] * yDims[1] * yDims[2]) * elementBytes;

    // The workspace TensorRT allocates: sized by the build phase for the profile's max shape.
    auto buildPlugin = create(creator, fields.get());
    size_t const workspaceBytes = build(*buildPlugin)->getWorkspaceSize(profile.data(), nbInputs, nullptr, 1);
    CHECK(workspaceBytes > 0);
    DeviceBuffer workspace(workspaceBytes);
    DeviceBuffer y(outBytes);
    y.upload(std::vector<uint8_t>(outBytes, 0xFF)); // NaN everywhere until written

    std::vector<void const*> inputPointers;
    for (auto const& buffer : inputs)
    {
        inputPointers.push_back(buffer->ptr);
    }
    void* outputs[] = {y.ptr};
    CHECK(runtime->onShapeChange(in.data(), nbInputs, &out, 1) == 0);
    CHECK(runtime->enqueue(in.data(), &out, inputPointers.data(), outputs, workspace.ptr, nullptr) == 0);

    // The same op through the C ABI, with its own workspace.
    PomPolyAggregateDesc const desc
        = op.desc(batch, tokens, channels, degree, pomDType(type), sideType == DataType::kFLOAT && type != DataType::kFLOAT);
    DeviceBuffer directWorkspace(pomPolyAggregateWorkspaceSize(&desc));
    DeviceBuffer direct(outBytes);
    bool const rope = op.rope != "none";
    size_t const maskIndex = 1 + (variant == "v2");
    size_t const cosIndex = maskIndex + (mode == "masked");
    CHECK(pomPolyAggregateLaunchEx(&desc, inputs[0]->ptr, variant == "v2" ? inputs[1]->ptr : nullptr,
              mode == "masked" ? inputs[maskIndex]->ptr : nullptr, rope ? inputs[cosIndex]->ptr : nullptr,
              rope ? inputs[cosIndex + 1]->ptr : nullptr, direct.ptr, directWorkspace.ptr, directWorkspace.bytes,
              nullptr)
        == POM_SUCCESS);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);

    std::vector<uint8_t> const fromPlugin = y.download();
    std::vector<uint8_t> const fromAbi = direct.download();
    CHECK(fromPlugin == fromAbi);
    std::vector<uint8_t> const unwritten(elementBytes, 0xFF);
    bool written = true;
    for (size_t i = 0; i < fromPlugin.size(); i += elementBytes)
    {
        written = written && !std::equal(unwritten.begin(), unwritten.end(), fromPlugin.begin() + i);
    }
    CHECK(written);
    if (fromPlugin != fromAbi || !written)
    {
        std::cerr << "enqueue mismatch: " << op.name() << " dtype " << static_cast<int>(type) << " side dtype "
                  << static_cast<int>(sideType) << std::endl;
    }
}

//! Whether enqueue can run here: a CUDA device, or the host emulation.
bool haveDevice()
{
    int count = 0;
    return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

} // namespace

int main()
{
    std::cout << "TensorRT headers " << NV_TENSORRT_MAJOR << "." << NV_TENSORRT_MINOR << "." << NV_TENSORRT_PATCH
              << " (error lines on stderr come from deliberately bad calls)" << std::endl;
    IPluginCreatorV3One* creator = findCreator();
    if (creator == nullptr)
    {
        return 1;
    }
    testCreator(*creator);
    std::vector<OpConfig> ops;
    for (char const* variant : {"v1", "v2"})
    {
        for (char const* mode : {"mean", "causal", "masked"})
        {
            ops.push_back({variant, mode});
        }
    }
    // RoPE in every mode, tables shared and per batch row; block-causal (300 tokens, frames of
    // 60 and 100; the profile's 1000 is no multiple of 60), with and without RoPE.
    std::vector<OpConfig> const extended{
        {"v2", "mean", "1d", 0, false},
        {"v2", "causal", "2d", 0, true},
        {"v2", "masked", "2d", 0, false},
        {"v2", "causal", "1d", 60, false},
        {"v1", "causal", "none", 60, false},
        {"v2", "causal", "2d", 100, true},
    };
    for (OpConfig const& op : ops)
    {
        testShapesAndTypes(*creator, op);
    }
    for (OpConfig const& op : extended)
    {
        testShapesAndTypes(*creator, op);
    }
    testFieldVariants(*creator);
    testBadFields(*creator);
    if (haveDevice())
    {
        int configurations = 0;
        for (OpConfig const& op : ops)
        {
            for (DataType type : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
            {
                testEnqueue(*creator, op, type, type);
                ++configurations;
            }
        }
        for (OpConfig const& op : extended) // dtypes only change the element type: two of them
        {
            for (DataType type : {DataType::kFLOAT, DataType::kHALF})
            {
                testEnqueue(*creator, op, type, type);
                ++configurations;
            }
        }
        // float32 coeff, mask, cos and sin under a 16-bit x: reduce (masked, every side input),
        // the causal chain and block-causal, with RoPE; bf16 once.
        std::vector<std::pair<OpConfig, DataType>> const float32Sides{
            {ops[5], DataType::kHALF},
            {extended[1], DataType::kHALF},
            {extended[2], DataType::kHALF},
            {extended[2], DataType::kBF16},
            {extended[3], DataType::kHALF},
        };
        for (auto const& [op, type] : float32Sides)
        {
            testEnqueue(*creator, op, type, DataType::kFLOAT);
            ++configurations;
        }
        std::cout << "enqueue checked against the C ABI launch for " << configurations << " configurations"
                  << std::endl;
    }
    else
    {
        std::cout << "enqueue checks skipped: no CUDA device" << std::endl;
    }
    if (gFailures != 0)
    {
        std::cout << gFailures << " check(s) failed" << std::endl;
        return 1;
    }
    std::cout << "all PolyAggregate plugin host checks passed" << std::endl;
    return 0;
}
