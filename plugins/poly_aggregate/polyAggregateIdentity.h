/*
 * Identity of the PolyAggregate TensorRT plugin, written once for C++: the registry key
 * (name, version, namespace) and the names of its fields. The Python side's copy is in
 * pom_deploy/ops/poly_aggregate.py (PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE, PLUGIN_FIELDS,
 * ONNX_ATTRIBUTES); tests/test_plugin_identity.py parses this header and checks that they agree.
 */
#ifndef POM_POLY_AGGREGATE_IDENTITY_H
#define POM_POLY_AGGREGATE_IDENTITY_H

namespace pom
{

constexpr char const* kPluginName = "PolyAggregate";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "pom_deploy";

// Plugin fields, in this order (the ONNX node's attributes of the same names).
constexpr char const* kFieldVariant = "variant";
constexpr char const* kFieldDegree = "degree";
constexpr char const* kFieldMode = "mode";
constexpr char const* kFieldFrameTokens = "frame_tokens"; // optional, default 0
constexpr char const* kFieldRope = "rope";                // optional, default "none"

// ONNX attributes that select the creator in TensorRT's parser; accepted and ignored as fields.
constexpr char const* kAttributePluginVersion = "plugin_version";
constexpr char const* kAttributePluginNamespace = "plugin_namespace";

} // namespace pom

#endif // POM_POLY_AGGREGATE_IDENTITY_H
