// Declarations only (include/CAditFuzzer.h); SwiftPM needs a source file in a C target.
#include "CAditFuzzer.h"
