/*
 * TensorRT IPluginV3 adapter of the PolyAggregate kernels.
 *
 * Registry key and field names: polyAggregateIdentity.h (name "PolyAggregate", version "1",
 * namespace "pom_deploy"). Fields: variant (kCHAR "v1"|"v2"), degree (kINT32), mode (kCHAR "mean"|"causal"|"masked"),
 * optional frame_tokens (kINT32, default 0) and rope (kCHAR "none"|"1d"|"2d", default "none");
 * plugin_version / plugin_namespace are accepted and ignored (they select the creator).
 * Inputs: x (B, N, C), then coeff (C, K) for v2, then mask (B, N) for masked, then cos and sin
 * (B or 1, N, C/2) with RoPE; x in fp32, fp16 or bf16, the other inputs all in x's type or all in
 * fp32 (exact under a 16-bit x), linear format. Output in x's type: (B, 1, C) for mean/masked,
 * (B, N, C) for causal (block-causal too).
 * Builds against TensorRT 10.3+ headers (the V3 interfaces are in NvInferRuntime.h there).
 */
#ifndef POM_POLY_AGGREGATE_PLUGIN_H
#define POM_POLY_AGGREGATE_PLUGIN_H

#include "polyAggregate.h"
#include "polyAggregateIdentity.h"

#include <NvInferRuntime.h>

#include <string>
#include <vector>

namespace pom
{

//! Validated plugin attributes.
struct PolyAggregateConfig
{
    int32_t variant{POM_VARIANT_V1};
    int32_t degree{0};
    int32_t mode{POM_MODE_MEAN};
    int32_t frameTokens{0}; // absent in nodes written before it existed: off
    int32_t rope{POM_ROPE_NONE};

    //! Number of inputs the node must have: x, coeff for v2, mask for masked, cos and sin with RoPE.
    int32_t nbInputs() const;
    //! Index of the cos input (sin follows it); meaningful with RoPE only.
    int32_t cosIndex() const;
};

class PolyAggregatePlugin final : public nvinfer1::IPluginV3,
                                  public nvinfer1::IPluginV3OneCore,
                                  public nvinfer1::IPluginV3OneBuild,
                                  public nvinfer1::IPluginV3OneRuntime
{
public:
    PolyAggregatePlugin(PolyAggregateConfig const& config, std::string const& pluginNamespace);
    PolyAggregatePlugin(PolyAggregatePlugin const& other);
    PolyAggregatePlugin& operator=(PolyAggregatePlugin const&) = delete;
    ~PolyAggregatePlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    PolyAggregateConfig const& config() const noexcept
    {
        return mConfig;
    }

private:
    void updateSerializedFields();

    PolyAggregateConfig mConfig;
    std::string mNamespace;
    std::string mVariantText;
    std::string mModeText;
    std::string mRopeText;
    std::vector<nvinfer1::PluginField> mSerializedFields;
    nvinfer1::PluginFieldCollection mSerialized{};
};

class PolyAggregatePluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    PolyAggregatePluginCreator();
    ~PolyAggregatePluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

//! Parses plugin fields into `config`; on failure returns false and explains in `error`.
bool parsePolyAggregateFields(nvinfer1::PluginFieldCollection const* fc, PolyAggregateConfig& config, std::string& error);

} // namespace pom

//! Plugin-library entry points for IPluginRegistry::loadLibrary.
extern "C" POM_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" POM_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder);

#endif // POM_POLY_AGGREGATE_PLUGIN_H
