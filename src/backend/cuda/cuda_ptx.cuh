// cuda_ptx.cuh — the tensor-core building blocks the hand-written kernels share (flash attention, the
// implicit-GEMM convolution): cp.async copies into shared memory, ldmatrix, and mma.sync m16n8k16 with
// fp32 accumulation (fp16 or bf16 operands). Device-only, inline.
#ifndef KILN_BACKEND_CUDA_PTX_CUH
#define KILN_BACKEND_CUDA_PTX_CUH

#include <stdint.h>

#include "backend/cuda/cuda_dtype.cuh"

__device__ __forceinline__ uint32_t kc_smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void kc_cp_async16(void *smem, const void *gmem, bool valid) {
    int bytes = valid ? 16 : 0;  // 0: zero-fill the 16 bytes (rows past the end)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(kc_smem_addr(smem)), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void kc_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void kc_cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void kc_ldmatrix_x4(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(kc_smem_addr(p)));
}
__device__ __forceinline__ void kc_ldmatrix_x4_trans(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(kc_smem_addr(p)));
}
// D(16x8, f32) += A(16x16, f16, row) * B(16x8, f16, col)
__device__ __forceinline__ void kc_mma16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The same with bf16 operands (A, B bf16; accumulation fp32).
__device__ __forceinline__ void kc_mma16816_bf16(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Element type T picks the instruction (kernels templated on T).
template <typename T>
__device__ __forceinline__ void kc_mma16816_t(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void kc_mma16816_t<__half>(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    kc_mma16816(d, a, b0, b1);
}
template <>
__device__ __forceinline__ void kc_mma16816_t<__nv_bfloat16>(float d[4], const uint32_t a[4], uint32_t b0,
                                                             uint32_t b1) {
    kc_mma16816_bf16(d, a, b0, b1);
}

#endif
