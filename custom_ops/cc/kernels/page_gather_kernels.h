// PageGather functors, one per device: the kernels' computation, apart from the
// OpKernel that validates inputs and allocates the output.

#ifndef WEIGHTSEP_PAGE_GATHER_KERNELS_H_
#define WEIGHTSEP_PAGE_GATHER_KERNELS_H_

#include <cstdint>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

#if GOOGLE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace weightsep {

// Inputs already validated: shapes consistent, every table entry in [0, P + E).
struct PageGatherArgs {
  const tensorflow::Tensor* shared;     // [P, S]
  const tensorflow::Tensor* exclusive;  // [E, S]
  const tensorflow::Tensor* table;      // [n_p], on the host
  int64_t num_weights;
};

namespace functor {

template <typename Device>
struct PageGather {
  // Writes the gathered weights into out ([num_weights], on Device).
  void operator()(tensorflow::OpKernelContext* ctx, const PageGatherArgs& args,
                  tensorflow::Tensor* out);
};

}  // namespace functor

#if GOOGLE_CUDA
// The CUDA launcher in page_gather.cu; all pointers on the device.
cudaError_t LaunchPageGather(const float* shared, const float* exclusive, const int32_t* table,
                             int num_shared, int page_size, int64_t num_pages,
                             int64_t num_weights, float* out, cudaStream_t stream);
#endif

}  // namespace weightsep

#endif  // WEIGHTSEP_PAGE_GATHER_KERNELS_H_
