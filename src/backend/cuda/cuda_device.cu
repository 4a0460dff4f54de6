// cuda_device.cu — opening the GPU: checks that a device exists and is new enough (sm_80+).
// The kernels and the plan compiler live beside this file, one op family per file.
#include <cuda_runtime.h>
#include <stdio.h>

extern "C" {
#include "core/error.h"
}

extern "C" int kiln_cuda_check_device(int device, char *name, size_t name_size, int *cc_major, int *cc_minor) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0)
        return kiln_error(KILN_EBACKEND, "no CUDA GPU found (%s); use --backend cpu",
                          err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    if (device < 0 || device >= count)
        return kiln_error(KILN_EINVAL, "CUDA device %d does not exist (%d found)", device, count);
    cudaDeviceProp prop;
    err = cudaGetDeviceProperties(&prop, device);
    if (err != cudaSuccess) return kiln_error(KILN_EBACKEND, "CUDA device %d: %s", device, cudaGetErrorString(err));
    if (prop.major < 8)
        return kiln_error(KILN_EUNSUPPORTED,
                          "GPU %s has compute capability %d.%d; kiln's CUDA backend needs 8.0 or newer",
                          prop.name, prop.major, prop.minor);
    snprintf(name, name_size, "%s", prop.name);
    *cc_major = prop.major;
    *cc_minor = prop.minor;
    return KILN_OK;
}
