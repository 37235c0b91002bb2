// Host-side check of the kernels' number formats (quantMath.cuh), without a GPU. Reads commands
// on stdin and prints one line of results per command, which tests/test_plugins.py compares with
// the Python definitions of the same formats:
//   fp4 KIND                   16 values, their INT8 codes and E4M3 bytes (KIND 0 e2m1, 1 e3m0, 2 e1m2)
//   e2m1 N x...                magnitude index of each |x|
//   int8 N x...                symmetric INT8 rounding
//   e4m3 N x...                E4M3 byte of each x, then its value
//   uint4 Z N x...             asymmetric UINT4 code of each x with zero point Z, minus Z
//   int4 N byte...             the 2N signed 4-bit codes
//   stream BITS COUNT N byte... COUNT indices of a BITS-bit little-endian stream
#include "quantMath.cuh"

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

using namespace dit_export;

int main()
{
    std::string command;
    while (std::cin >> command)
    {
        if (command == "fp4")
        {
            int kind = 0;
            std::cin >> kind;
            for (uint32_t code = 0; code < 16; ++code)
            {
                auto const k = static_cast<Fp4Kind>(kind);
                std::printf("%g:%d:%d ", fp4Value(k, code), fp4AsInt8(k, code), fp4AsE4m3(k, code));
            }
        }
        else if (command == "e2m1" || command == "int8" || command == "e4m3")
        {
            int n = 0;
            std::cin >> n;
            for (int i = 0; i < n; ++i)
            {
                float x = 0.0f;
                std::cin >> x;
                if (command == "e2m1")
                {
                    std::printf("%d ", e2m1Index(x));
                }
                else if (command == "int8")
                {
                    std::printf("%d ", roundToInt8(x));
                }
                else
                {
                    uint8_t const byte = roundToE4m3(x);
                    std::printf("%d:%.9g ", byte, e4m3Value(byte));
                }
            }
        }
        else if (command == "uint4")
        {
            int zero = 0;
            int n = 0;
            std::cin >> zero >> n;
            for (int i = 0; i < n; ++i)
            {
                float x = 0.0f;
                std::cin >> x;
                std::printf("%g ", roundToUint4(x, static_cast<float>(zero)) - static_cast<float>(zero));
            }
        }
        else if (command == "int4" || command == "stream")
        {
            int bits = 0;
            int count = 0;
            if (command == "stream")
            {
                std::cin >> bits >> count;
            }
            int n = 0;
            std::cin >> n;
            std::vector<uint8_t> bytes(static_cast<size_t>(n));
            for (auto& b : bytes)
            {
                int v = 0;
                std::cin >> v;
                b = static_cast<uint8_t>(v);
            }
            if (command == "int4")
            {
                for (int i = 0; i < 2 * n; ++i)
                {
                    std::printf("%d ", int4At(bytes.data(), i));
                }
            }
            else
            {
                for (int i = 0; i < count; ++i)
                {
                    std::printf("%u ", streamIndexAt(bytes.data(), i, bits));
                }
            }
        }
        else
        {
            std::fprintf(stderr, "unknown command %s\n", command.c_str());
            return 2;
        }
        std::printf("\n");
    }
    return 0;
}
