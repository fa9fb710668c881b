/*
 * Host-side test of the PolyAggregate TensorRT adapter: everything a builder calls before
 * enqueue, without a GPU and without TensorRT's libraries (headers only). TensorRT's
 * IExprBuilder is a thin wrapper over an internal interface (apiv::VExprBuilder); a small
 * fake of that interface stands in for the builder's shape expressions.
 */
#include "polyAggregatePlugin.h"

#include <NvInferImpl.h>
#include <NvInferVersion.h>

#include <cstring>
#include <deque>
#include <iostream>
#include <memory>
#include <string>
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
    // Without TensorRT loaded in this process nothing registered at load time, so the library
    // hands out its creator for loadLibrary.
    CHECK(count == 1);
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
    CHECK(names != nullptr && names->nbFields == 3);
    if (names != nullptr && names->nbFields == 3)
    {
        CHECK(std::strcmp(names->fields[0].name, "variant") == 0 && names->fields[0].type == PluginFieldType::kCHAR);
        CHECK(std::strcmp(names->fields[1].name, "degree") == 0 && names->fields[1].type == PluginFieldType::kINT32);
        CHECK(std::strcmp(names->fields[2].name, "mode") == 0 && names->fields[2].type == PluginFieldType::kCHAR);
    }
}

void testShapesAndTypes(IPluginCreatorV3One& creator, std::string const& variant, std::string const& mode)
{
    Fields fields(variant, 2, mode);
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

    int32_t const nbInputs = 1 + (variant == "v2") + (mode == "masked");
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
    DimsExprs inputs[3]{};
    inputs[0].nbDims = 3;
    inputs[0].d[0] = exprs.runtimeDim();
    inputs[0].d[1] = exprs.runtimeDim();
    inputs[0].d[2] = exprs.constant(8);
    for (int32_t i = 1; i < nbInputs; ++i)
    {
        inputs[i].nbDims = 2;
        inputs[i].d[0] = exprs.runtimeDim();
        inputs[i].d[1] = exprs.runtimeDim();
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

    // Formats: linear fp32/fp16/bf16, every tensor of x's type.
    std::vector<DynamicPluginTensorDesc> inOut;
    inOut.push_back(tensor(DataType::kHALF, {2, 5, 8}));
    if (variant == "v2")
    {
        inOut.push_back(tensor(DataType::kHALF, {8, 2}));
    }
    if (mode == "masked")
    {
        inOut.push_back(tensor(DataType::kHALF, {2, 5}));
    }
    inOut.push_back(tensor(DataType::kHALF, {2, mode == "causal" ? 5 : 1, 8}));
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

    // configurePlugin: consistent shapes pass; a wrong input count fails.
    CHECK(b->configurePlugin(inOut.data(), nbInputs, inOut.data() + nbInputs, 1) == 0);
    CHECK(b->configurePlugin(inOut.data(), nbInputs + 1, inOut.data() + nbInputs, 1) != 0);

    // Workspace: the C ABI's size for the profile's max shape.
    inOut[0].max.d[0] = 4;
    inOut[0].max.d[1] = 4096;
    PomPolyAggregateDesc d{4, 4096, 8, 2, variant == "v1" ? POM_VARIANT_V1 : POM_VARIANT_V2,
        mode == "mean" ? POM_MODE_MEAN : (mode == "causal" ? POM_MODE_CAUSAL : POM_MODE_MASKED), POM_DTYPE_FLOAT16};
    size_t const expected = pomPolyAggregateWorkspaceSize(&d);
    CHECK(expected > 0);
    CHECK(b->getWorkspaceSize(inOut.data(), nbInputs, inOut.data() + nbInputs, 1) == expected);

    // Serialization round trip, as at engine deserialization (kRUNTIME), and clone.
    PluginFieldCollection const* serialized = runtime->getFieldsToSerialize();
    CHECK(serialized != nullptr && serialized->nbFields == 3);
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
        CHECK(copy.variant == original.variant && copy.degree == original.degree && copy.mode == original.mode);
        auto* otherRuntime
            = static_cast<IPluginV3OneRuntime*>(other->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        PluginFieldCollection const* again = otherRuntime->getFieldsToSerialize();
        CHECK(again->nbFields == 3 && std::strcmp(static_cast<char const*>(again->fields[0].data), variant.c_str()) == 0
            && std::strcmp(static_cast<char const*>(again->fields[2].data), mode.c_str()) == 0
            && *static_cast<int32_t const*>(again->fields[1].data) == 2);
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
    CHECK(create(creator, noNul.get()) != nullptr);
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
    for (char const* variant : {"v1", "v2"})
    {
        for (char const* mode : {"mean", "causal", "masked"})
        {
            testShapesAndTypes(*creator, variant, mode);
        }
    }
    testFieldVariants(*creator);
    testBadFields(*creator);
    if (gFailures != 0)
    {
        std::cout << gFailures << " check(s) failed" << std::endl;
        return 1;
    }
    std::cout << "all PolyAggregate plugin host checks passed" << std::endl;
    return 0;
}
