#ifndef C_ADIT_ZLIB_H
#define C_ADIT_ZLIB_H

#include <zlib.h>

// deflateInit2 and inflateInit2 are macros (they pass the library version and the stream size), which Swift
// cannot call; these wrappers can be.

static inline int adit_deflate_init(z_streamp stream, int level, int window_bits, int memory_level, int strategy) {
    return deflateInit2(stream, level, Z_DEFLATED, window_bits, memory_level, strategy);
}

static inline int adit_inflate_init(z_streamp stream, int window_bits) {
    return inflateInit2(stream, window_bits);
}

#endif
