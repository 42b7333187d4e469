#ifndef C_ADIT_GSSAPI_H
#define C_ADIT_GSSAPI_H

#include <stddef.h>

// One SPNEGO (Negotiate) client exchange through the system GSSAPI (MIT Kerberos), reduced to plain C types:
// GSSAPI's own API is macros and opaque handles that Swift imports badly. The library is loaded at run time
// (dlopen of libgssapi_krb5.so.2), so building needs no Kerberos headers and running needs Kerberos only for
// Negotiate.

/// 1 when the system GSSAPI could be loaded; else 0, with the reason (and what to install) in `error`.
int adit_gss_available(char *error, size_t error_capacity);

/// One step: `service` is "HTTP@proxyhost"; `input` is the server's last token (NULL, 0 at first).
/// Returns 0 when the context is complete, 1 when the server must answer again, -1 on error (message in
/// `error`). `*output` (free with adit_gss_free) holds the token to send, possibly empty.
int adit_gss_step(void **context, const char *service, const void *input, size_t input_length,
                  void **output, size_t *output_length, char *error, size_t error_capacity);

void adit_gss_delete(void **context);
void adit_gss_free(void *pointer);

#endif
