// Argument checks of the ops' C++ entry points. A failed check raises c10::Error (a RuntimeError in
// Python) whose message starts "<op>: argument '<arg>': ", so the user knows which argument of which
// op to fix whichever backend caught it.
//
// The op's name is `kOpName`, found by ordinary lookup where the macro expands: each op declares
//   inline constexpr const char* kOpName = "<op>";
// in its namespace (scob_fast::<op>), so call sites name only the argument.
#pragma once

#include <c10/util/Exception.h>

#define SCOB_FAST_CHECK_ARG(cond, arg, ...) \
  TORCH_CHECK(cond, kOpName, ": argument '", arg, "': ", __VA_ARGS__)
