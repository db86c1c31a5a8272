// The end of both ops' shape functions: the output is [num_weights] (an
// attribute, so the shape is static), and a table whose length is known must
// hold ceil(num_weights / S) entries, the kernels' check and message
// (../kernels/page_table_checks.h) at graph construction.

#ifndef WEIGHTSEP_PAGE_GATHER_SHAPE_H_
#define WEIGHTSEP_PAGE_GATHER_SHAPE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "../kernels/page_table_checks.h"

namespace weightsep {

// Sets output 0 to [num_weights]. row is the stores' merged row length, in
// elements of weights_per_element weights each (1; 2 for packed int4 bytes),
// so S = weights_per_element * row; table is the table's shape.
inline absl::Status SetPageGatherOutputShape(tensorflow::shape_inference::InferenceContext* c,
                                             const char* op,
                                             tensorflow::shape_inference::DimensionHandle row,
                                             int64_t weights_per_element,
                                             tensorflow::shape_inference::ShapeHandle table) {
  int64_t num_weights;
  TF_RETURN_IF_ERROR(c->GetAttr("num_weights", &num_weights));
  if (c->ValueKnown(row) && c->ValueKnown(c->Dim(table, 0))) {
    const int64_t s = weights_per_element * c->Value(row);
    const int64_t pages = c->Value(c->Dim(table, 0));
    if (s > 0 && pages != PagesFor(num_weights, s)) {
      return PageCountError(op, pages, num_weights, s);
    }
  }
  c->set_output(0, c->Vector(num_weights));
  return absl::OkStatus();
}

}  // namespace weightsep

#endif  // WEIGHTSEP_PAGE_GATHER_SHAPE_H_
