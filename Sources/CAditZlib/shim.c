// The zlib shims are header-only; this file gives the target something to compile.
