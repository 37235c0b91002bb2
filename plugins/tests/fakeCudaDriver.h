// A stand-in for the CUDA driver (libcuda.so.1) with the few entry points the Triton kernel launcher
// uses: it records what the launcher asks for, so that tritonDriverCheck.cpp can test the driver
// side without a GPU. Never install it where a real driver could be shadowed.
#pragma once

#include <cstdint>

struct FakeCudaState
{
    // Set by the test.
    unsigned long long context;  // the calling thread's current context; 0 for none
    int major;
    int minor;
    int sharedOptin;
    int paramSizes[32];  // what cuFuncGetParamInfo reports for every kernel
    int paramCount;
    // Recorded by the stand-in.
    int cubinLoads;
    int ptxLoads;
    int launches;
    int sharedAttribute;  // the last CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES set
    unsigned grid[3];
    unsigned block[3];
    unsigned sharedBytes;
    void* stream;
    char symbol[64];
    int launchedParams;             // the last launch's parameter values, read with paramSizes
    uint64_t paramValues[32];
};

extern "C" FakeCudaState* fakeCudaState();
