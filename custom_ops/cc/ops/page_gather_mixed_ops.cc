// Registration of PageGatherQuantizedMixed: PageGather over the int4 pages of
// an int4 state (weightsep/pageformat.py, docs/FORMAT.md), with one float16
// scale per group of G weights and int8 pages among the int4 pages.
//
// A page row holds S / 2 bytes of 4-bit two's-complement codes (element 2k in
// the low nibble of byte k). An int4 page (kind 4) decodes q = that code; an
// int8 page (kind 8) q = 16 * code + l, l the unsigned nibble at the same place
// of its row in `wide` (rows in page order: an int8 page's row is the number of
// int8 pages before it in its store). Weight j of a page is
// float32(q_j) * float32(scale[row, j / G]): one float32 multiply, so the op is
// bit-exact against weightsep.pageformat. Not differentiable.

#include "page_gather_shape.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace weightsep {

using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("PageGatherQuantizedMixed")
    .Input("shared: uint8")
    .Input("shared_scale: half")
    .Input("shared_wide: uint8")
    .Input("shared_bits: uint8")
    .Input("exclusive: uint8")
    .Input("exclusive_scale: half")
    .Input("exclusive_wide: uint8")
    .Input("exclusive_bits: uint8")
    .Input("page_table: Tindex")
    .Attr("Tindex: {int32, int64} = DT_INT32")
    .Attr("num_weights: int >= 0")
    .Output("weights: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle unused, table;
      for (int i : {0, 1, 2, 4, 5, 6}) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 2, &unused));
      for (int i : {3, 7}) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 1, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(8), 1, &table));
      DimensionHandle row_bytes;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(c->input(0), 1), c->Dim(c->input(4), 1), &row_bytes));
      return SetPageGatherOutputShape(c, "PageGatherQuantizedMixed", row_bytes, 2, table);
    })
    .Doc(R"doc(
Materializes a task's float32 weights from the mixed int4 / int8 pages of an int4 state.

shared: [P, S / 2] packed 4-bit codes; shared_scale: [P, S / G] float16 group scales;
shared_wide: [K, S / 2] the low nibbles of the K int8 pool pages, in page order;
shared_bits: [P] each page's kind, 4 or 8. exclusive_*: the same for the E exclusive rows.
page_table: [n_p] entries; e < P selects shared row e, e >= P exclusive row e - P.
weights: [n] float32(q) * float32(scale) of each page, concatenated, cut to n.
)doc");

}  // namespace weightsep
