// Registration of PageGatherQuantized: PageGather over int8 weight-pages with
// one float32 scale per page (int4 states have their own op,
// PageGatherQuantizedMixed).
//
// A page row holds S int8 values. Weight j of a page is float32(q_j) *
// scale[row], one float32 multiply, so the op is bit-exact against any
// reference that does that multiply. The page table is the
// PageGather encoding and gets the same checks. Not differentiable: training
// runs on float32 weights with fake quantization, never through this op.

#include "page_gather_shape.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace weightsep {

using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("PageGatherQuantized")
    .Input("shared: int8")
    .Input("shared_scale: float")
    .Input("exclusive: int8")
    .Input("exclusive_scale: float")
    .Input("page_table: Tindex")
    .Attr("Tindex: {int32, int64} = DT_INT32")
    .Attr("num_weights: int >= 0")
    .Output("weights: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle shared, exclusive, shared_scale, exclusive_scale, table;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &shared));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &shared_scale));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &exclusive));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &exclusive_scale));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 1, &table));
      DimensionHandle row_bytes, unused;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(shared, 1), c->Dim(exclusive, 1), &row_bytes));
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(shared, 0), c->Dim(shared_scale, 0), &unused));
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(exclusive, 0), c->Dim(exclusive_scale, 0), &unused));
      return SetPageGatherOutputShape(c, "PageGatherQuantized", row_bytes, 1, table);
    })
    .Doc(R"doc(
Materializes a task's float32 weights from int8 weight-pages and per-page scales.

shared: [P, S] shared pages of S int8 values.
shared_scale: [P] one float32 scale per shared page.
exclusive: [E, S] exclusive pages (E may be 0).
exclusive_scale: [E] one float32 scale per exclusive page.
page_table: [n_p] int32 or int64 entries; e < P selects shared row e, e >= P
  exclusive row e - P; every entry must lie in [0, P + E).
num_weights: length n of the output; n_p must equal ceil(n / S).
weights: [n] float32(q) * scale of each page, concatenated, cut to n.
)doc");

}  // namespace weightsep
