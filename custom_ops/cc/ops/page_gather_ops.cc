// Registration of PageGather: materializes a task's weights from weight-pages.
//
// For page i with entry e = page_table[i]: shared row e when e < P, else
// exclusive row e - P; the rows concatenated and cut to num_weights. This is
// the page-table encoding of the original runtime. num_weights is an attribute
// rather than an input so that the output shape is known when the graph is
// built (a task's size never changes while its model exists). The table may be
// int32 or int64: the kernel checks int64 entries before narrowing them, so a
// large entry is an error rather than a wrapped index.

#include "page_gather_shape.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace weightsep {

using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("PageGather")
    .Input("shared: float")
    .Input("exclusive: float")
    .Input("page_table: Tindex")
    .Attr("Tindex: {int32, int64} = DT_INT32")
    .Attr("num_weights: int >= 0")
    .Output("weights: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle shared, exclusive, table;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &shared));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &exclusive));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &table));
      DimensionHandle page_size;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(shared, 1), c->Dim(exclusive, 1), &page_size));
      return SetPageGatherOutputShape(c, "PageGather", page_size, 1, table);
    })
    .Doc(R"doc(
Materializes a task's weight vector from the shared pool and exclusive pages.

shared: [P, S] shared weight-pages.
exclusive: [E, S] exclusive weight-pages (E may be 0).
page_table: [n_p] int32 or int64 entries; e < P selects shared row e, e >= P
  exclusive row e - P; every entry must lie in [0, P + E).
num_weights: length n of the output; n_p must equal ceil(n / S).
weights: [n] the pages concatenated, cut to n.
)doc");

}  // namespace weightsep
