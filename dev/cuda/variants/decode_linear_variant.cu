// decode_linear_variant.cu: kernels/decode_linear.cu compiled again with other DL_CFG_* knobs in namespace DL_VARIANT, one object per lab variant (the Makefile's DL_VARIANTS), so that lab_decode_linear's variants build in parallel.
//
// Every header the kernel file includes comes first, outside the namespace, so that only the kernel file's own
// code (kernels, launchers, decode_linear_forward) lands in DL_VARIANT; the lab declares what it calls
// (DL_DECLARE_VARIANT in dev/cuda/decode_linear.cu).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <utility>

#include "kernels/cuda_common.cuh"
#include "kernels/decode_linear.cuh"
#include "kernels/mma.cuh"
#include "kernels/wgmma.cuh"

#ifndef DL_VARIANT
#error "compile with -DDL_VARIANT=<namespace> and the variant's DL_CFG_* knobs (see the Makefile's DL_VARIANTS)"
#endif

namespace DL_VARIANT {
#include "kernels/decode_linear.cu"
}
