/*
 * Host-side float16 / bfloat16 conversions (round to nearest even) and a typed view of a host
 * tensor of any PolyAggregate dtype: shared by the CPU emulation and the CPU kernel.
 */
#ifndef POM_POLY_AGGREGATE_HOST_TENSOR_H
#define POM_POLY_AGGREGATE_HOST_TENSOR_H

#include "polyAggregate.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace pom
{

inline float halfBitsToFloat(uint16_t h)
{
    uint32_t const sign = static_cast<uint32_t>(h & 0x8000U) << 16;
    uint32_t exponent = (h >> 10) & 0x1FU;
    uint32_t mantissa = h & 0x3FFU;
    uint32_t bits;
    if (exponent == 0x1FU)
    {
        bits = sign | 0x7F800000U | (mantissa << 13);
    }
    else if (exponent != 0)
    {
        bits = sign | ((exponent + 112U) << 23) | (mantissa << 13);
    }
    else if (mantissa == 0)
    {
        bits = sign;
    }
    else
    {
        // Subnormal half: normalize into a float.
        exponent = 113U;
        while ((mantissa & 0x400U) == 0)
        {
            mantissa <<= 1;
            --exponent;
        }
        bits = sign | (exponent << 23) | ((mantissa & 0x3FFU) << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
}

inline uint16_t floatToHalfBits(float f)
{
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof(bits));
    uint16_t const sign = static_cast<uint16_t>((bits >> 16) & 0x8000U);
    uint32_t const absBits = bits & 0x7FFFFFFFU;
    if (absBits >= 0x7F800000U)
    {
        return static_cast<uint16_t>(sign | 0x7C00U | (absBits > 0x7F800000U ? 0x200U : 0U));
    }
    if (absBits >= 0x477FF000U) // rounds to >= 65520: overflow to infinity
    {
        return static_cast<uint16_t>(sign | 0x7C00U);
    }
    if (absBits < 0x38800000U) // below the smallest normal half: round to a subnormal
    {
        float absF;
        std::memcpy(&absF, &absBits, sizeof(absF));
        // 2^24 * |f| in units of the smallest subnormal, rounded to nearest even.
        return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(absF * 16777216.0F)));
    }
    uint32_t const roundBias = 0xFFFU + ((absBits >> 13) & 1U);
    return static_cast<uint16_t>(sign | (((absBits - 0x38000000U) + roundBias) >> 13));
}

inline float bf16BitsToFloat(uint16_t h)
{
    uint32_t const bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
}

inline uint16_t floatToBf16Bits(float f)
{
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof(bits));
    if ((bits & 0x7FFFFFFFU) > 0x7F800000U)
    {
        return static_cast<uint16_t>((bits >> 16) | 0x40U); // quiet NaN
    }
    return static_cast<uint16_t>((bits + 0x7FFFU + ((bits >> 16) & 1U)) >> 16);
}

//! Typed view of a host tensor of any supported dtype.
struct Tensor
{
    void const* data;
    int32_t dtype;

    float at(int64_t i) const
    {
        switch (dtype)
        {
        case POM_DTYPE_FLOAT16: return halfBitsToFloat(static_cast<uint16_t const*>(data)[i]);
        case POM_DTYPE_BFLOAT16: return bf16BitsToFloat(static_cast<uint16_t const*>(data)[i]);
        default: return static_cast<float const*>(data)[i];
        }
    }
};

inline void store(void* data, int32_t dtype, int64_t i, float value)
{
    switch (dtype)
    {
    case POM_DTYPE_FLOAT16: static_cast<uint16_t*>(data)[i] = floatToHalfBits(value); break;
    case POM_DTYPE_BFLOAT16: static_cast<uint16_t*>(data)[i] = floatToBf16Bits(value); break;
    default: static_cast<float*>(data)[i] = value; break;
    }
}

} // namespace pom

#endif // POM_POLY_AGGREGATE_HOST_TENSOR_H
