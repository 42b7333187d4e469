#ifndef C_ADIT_FUZZER_H
#define C_ADIT_FUZZER_H

#include <stddef.h>
#include <stdint.h>

/// libFuzzer's entry for programs that have a main of their own (LLVM 11 and later): it parses the libFuzzer flags
/// in argv and runs `callback` on each input. Resolved from libclang_rt.fuzzer when linked with -sanitize=fuzzer.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
