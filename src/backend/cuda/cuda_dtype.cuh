// cuda_dtype.cuh — the two 16-bit element types activations and weights can have on the GPU
// (fp16, the default, or bf16) and the conversions kernels use to stay generic over them.
//
// Buffers are typed kc_half everywhere in host code: "16 bits per element"; which format those
// bits are in is the backend's dtype (kc_libs.dtype). Kernels that compute take the element type
// as a template parameter T (__half or __nv_bfloat16) and load/store through the helpers below;
// kernels that only move data (im2col, channel copies, upsampling) do not care.
#ifndef KILN_BACKEND_CUDA_DTYPE_CUH
#define KILN_BACKEND_CUDA_DTYPE_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

typedef enum kc_dtype { KC_F16 = 0, KC_BF16 = 1 } kc_dtype;

static inline const char *kc_dtype_name(kc_dtype dt) { return dt == KC_BF16 ? "bf16" : "fp16"; }

// Scalars.
__device__ __forceinline__ float kc_to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float kc_to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T kc_from_f(float v);
template <> __device__ __forceinline__ __half kc_from_f<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 kc_from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// Eight consecutive elements as one 16-byte vector (uint4) <-> eight floats.
template <typename T> __device__ __forceinline__ void kc_unpack8(uint4 u, float f[8]) {
    const T *h = (const T *)&u;
#pragma unroll
    for (int e = 0; e < 8; e++) f[e] = kc_to_f(h[e]);
}
template <typename T> __device__ __forceinline__ uint4 kc_pack8(const float f[8]) {
    uint4 u;
    T *h = (T *)&u;
#pragma unroll
    for (int e = 0; e < 8; e++) h[e] = kc_from_f<T>(f[e]);
    return u;
}

// Pairs of adjacent elements (4 bytes: __half2 / __nv_bfloat162) <-> two floats; the pair forms
// keep the fp16 kernels on the same instructions they used before they became templates.
template <typename T> struct kc_pair_of;
template <> struct kc_pair_of<__half> { typedef __half2 type; };
template <> struct kc_pair_of<__nv_bfloat16> { typedef __nv_bfloat162 type; };
__device__ __forceinline__ float2 kc_to_f2(__half2 v) { return __half22float2(v); }
__device__ __forceinline__ float2 kc_to_f2(__nv_bfloat162 v) { return __bfloat1622float2(v); }
template <typename T> __device__ __forceinline__ typename kc_pair_of<T>::type kc_from_f2(float lo, float hi);
template <> __device__ __forceinline__ __half2 kc_from_f2<__half>(float lo, float hi) {
    return __floats2half2_rn(lo, hi);
}
template <> __device__ __forceinline__ __nv_bfloat162 kc_from_f2<__nv_bfloat16>(float lo, float hi) {
    return __floats2bfloat162_rn(lo, hi);
}
// The same pair as the 32-bit register an mma.sync fragment holds.
template <typename T> __device__ __forceinline__ uint32_t kc_pack2(float lo, float hi) {
    typename kc_pair_of<T>::type h = kc_from_f2<T>(lo, hi);
    return *(uint32_t *)&h;
}

// Runs `body` with T bound to the element type of dt (host code, around a kernel launch).
#define KC_DISPATCH_DTYPE(dt, T, body)                                                                \
    do {                                                                                              \
        if ((dt) == KC_BF16) {                                                                        \
            typedef __nv_bfloat16 T;                                                                  \
            body;                                                                                     \
        } else {                                                                                      \
            typedef __half T;                                                                         \
            body;                                                                                     \
        }                                                                                             \
    } while (0)

#endif
