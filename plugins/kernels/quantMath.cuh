// Number formats of the dit-export kernels, callable from host and device so that host tests can
// check them without a GPU. Layouts are those of the plugin contract
// (include/dit_export/plugin_contract.h): 4-bit codes two per byte, element 2i in the low nibble.
#pragma once

#include <cstdint>
#include <cuda_fp8.h>

#if defined(__CUDACC__)
#define DIT_HD __host__ __device__ __forceinline__
#else
#define DIT_HD inline
#endif

namespace dit_export
{

// FP4 magnitudes by code index (code = sign << 3 | index), per weight format of the contract.
enum class Fp4Kind : int32_t
{
    kE2M1 = 0,
    kE3M0 = 1,
    kE1M2 = 2
};

DIT_HD float fp4Magnitude(Fp4Kind kind, int32_t index)
{
    // Kept as arithmetic rather than tables so that host and device share one definition.
    switch (kind)
    {
    case Fp4Kind::kE2M1: return index < 4 ? 0.5f * index : (index < 6 ? 1.0f * (index - 2) : 2.0f * (index - 4));
    case Fp4Kind::kE3M0: return index == 0 ? 0.0f : 0.125f * static_cast<float>(1 << index);
    case Fp4Kind::kE1M2: return 0.25f * index;
    }
    return 0.0f;
}

// The factor that makes every magnitude of a format an integer (E2M1: 0..12, E3M0: 0..64,
// E1M2: 0..7), so FP4 weights multiply exactly as INT8 codes with the scale divided by it.
DIT_HD float fp4IntegerFactor(Fp4Kind kind)
{
    return kind == Fp4Kind::kE2M1 ? 2.0f : 4.0f;
}

DIT_HD float fp4Value(Fp4Kind kind, uint32_t code)
{
    float const m = fp4Magnitude(kind, static_cast<int32_t>(code & 7u));
    return (code & 8u) ? -m : m;
}

DIT_HD int8_t fp4AsInt8(Fp4Kind kind, uint32_t code)
{
    return static_cast<int8_t>(fp4Value(kind, code) * fp4IntegerFactor(kind));
}

// FP8 E4M3 (OCP, "fn": no infinities, 0x7F/0xFF NaN) encoding of an FP4 value, which every FP4
// format of the contract represents exactly.
DIT_HD uint8_t fp4AsE4m3(Fp4Kind kind, uint32_t code)
{
    return static_cast<uint8_t>(__nv_cvt_float_to_fp8(fp4Value(kind, code), __NV_SATFINITE, __NV_E4M3));
}

// Two's complement 4-bit code (low nibble first) of element `i` of a packed row.
DIT_HD int32_t int4At(uint8_t const* packed, int64_t i)
{
    uint32_t const nibble = (packed[i >> 1] >> ((i & 1) * 4)) & 0xFu;
    return static_cast<int32_t>(nibble) - ((nibble & 8u) ? 16 : 0);
}

DIT_HD uint32_t nibbleAt(uint8_t const* packed, int64_t i)
{
    return (packed[i >> 1] >> ((i & 1) * 4)) & 0xFu;
}

// Index `i` of a little-endian bit stream of `bits`-bit indices (bits <= 16): bits
// [i bits, (i + 1) bits) of the stream.
DIT_HD uint32_t streamIndexAt(uint8_t const* stream, int64_t i, int32_t bits)
{
    int64_t const bit = i * bits;
    int64_t const byte = bit >> 3;
    int32_t const end = static_cast<int32_t>(bit & 7) + bits;  // bits of the window that are needed
    uint32_t window = stream[byte];
    if (end > 8)
    {
        window |= static_cast<uint32_t>(stream[byte + 1]) << 8;  // never read past the index's last byte
    }
    if (end > 16)
    {
        window |= static_cast<uint32_t>(stream[byte + 2]) << 16;
    }
    return (window >> (bit & 7)) & ((1u << bits) - 1u);
}

// FP4 E2M1 rounding of |y| (already divided by the scale) to a magnitude index: nearest, ties to
// the even index, saturating at 6; the same thresholds as exporter/quant/fp4.py.
DIT_HD int32_t e2m1Index(float magnitude)
{
    // Midpoints 0.25 0.75 1.25 1.75 2.5 3.5 5; a tie rounds up where the upper index is even
    // (0.75, 1.75, 3.5), which `>=` expresses without nudged thresholds.
    int32_t index = 0;
    index += magnitude > 0.25f;
    index += magnitude >= 0.75f;
    index += magnitude > 1.25f;
    index += magnitude >= 1.75f;
    index += magnitude > 2.5f;
    index += magnitude >= 3.5f;
    index += magnitude > 5.0f;
    return index;
}

DIT_HD float roundToE2m1(float y)
{
    float const m = fp4Magnitude(Fp4Kind::kE2M1, e2m1Index(y < 0 ? -y : y));
    return y < 0 ? -m : m;
}

// Symmetric INT8 rounding: nearest, ties to even, saturating at -128 and 127.
DIT_HD int8_t roundToInt8(float y)
{
    float const r = rintf(y);
    return static_cast<int8_t>(r < -128.0f ? -128.0f : (r > 127.0f ? 127.0f : r));
}

// Symmetric INT4 rounding (codes kept one per int8): nearest, ties to even, saturating at -8, 7.
DIT_HD int8_t roundToInt4(float y)
{
    float const r = rintf(y);
    return static_cast<int8_t>(r < -8.0f ? -8.0f : (r > 7.0f ? 7.0f : r));
}

// Asymmetric UINT4 code of y = x / scale with zero point z, as ONNX's QuantizeLinear computes it:
// round(y) (ties to even) + z, saturating at 0, 15.
DIT_HD float roundToUint4(float y, float zero)
{
    float const q = rintf(y) + zero;
    return q < 0.0f ? 0.0f : (q > 15.0f ? 15.0f : q);
}

DIT_HD uint8_t roundToE4m3(float y)
{
    return static_cast<uint8_t>(__nv_cvt_float_to_fp8(y, __NV_SATFINITE, __NV_E4M3));
}

DIT_HD float e4m3Value(uint8_t code)
{
    __half_raw const h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3);
    return __half2float(__half(h));
}

// The smallest dynamic scale, as in the exported graph: float32's tiny times 2^24.
constexpr float kTinyScale = 1.17549435e-38f * 16777216.0f;

} // namespace dit_export
