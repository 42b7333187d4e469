#include "CAditGSSAPI.h"

#include <gssapi/gssapi.h>
#include <gssapi/gssapi_krb5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static gss_OID_desc spnego_mechanism = {6, (void *)"\x2b\x06\x01\x05\x05\x02"};

static void describe(OM_uint32 major, OM_uint32 minor, char *error, size_t capacity) {
    OM_uint32 status, more = 0;
    gss_buffer_desc text = GSS_C_EMPTY_BUFFER;
    size_t used = 0;
    error[0] = 0;
    OM_uint32 codes[2] = {major, minor};
    int types[2] = {GSS_C_GSS_CODE, GSS_C_MECH_CODE};
    for (int i = 0; i < 2; i++) {
        if (codes[i] == 0) continue;
        more = 0;
        do {
            OM_uint32 ignored;
            status = gss_display_status(&ignored, codes[i], types[i], GSS_C_NO_OID, &more, &text);
            if (status != GSS_S_COMPLETE) break;
            int n = snprintf(error + used, capacity - used, "%s%.*s", used ? "; " : "", (int)text.length,
                             (const char *)text.value);
            gss_release_buffer(&ignored, &text);
            if (n < 0 || (size_t)n >= capacity - used) return;
            used += (size_t)n;
        } while (more != 0);
    }
}

int adit_gss_step(void **context, const char *service, const void *input, size_t input_length,
                  void **output, size_t *output_length, char *error, size_t error_capacity) {
    OM_uint32 major, minor;
    gss_name_t target = GSS_C_NO_NAME;
    gss_buffer_desc name = {strlen(service), (void *)service};
    *output = NULL;
    *output_length = 0;
    major = gss_import_name(&minor, &name, GSS_C_NT_HOSTBASED_SERVICE, &target);
    if (GSS_ERROR(major)) {
        describe(major, minor, error, error_capacity);
        return -1;
    }
    gss_buffer_desc in = {input_length, (void *)input};
    gss_buffer_desc out = GSS_C_EMPTY_BUFFER;
    gss_ctx_id_t ctx = *context ? (gss_ctx_id_t)*context : GSS_C_NO_CONTEXT;
    major = gss_init_sec_context(&minor, GSS_C_NO_CREDENTIAL, &ctx, target, &spnego_mechanism, 0, 0,
                                 GSS_C_NO_CHANNEL_BINDINGS, input_length ? &in : GSS_C_NO_BUFFER, NULL, &out, NULL,
                                 NULL);
    *context = ctx;
    OM_uint32 ignored;
    gss_release_name(&ignored, &target);
    if (GSS_ERROR(major)) {
        describe(major, minor, error, error_capacity);
        gss_release_buffer(&ignored, &out);
        return -1;
    }
    if (out.length) {
        *output = malloc(out.length);
        if (*output) {
            memcpy(*output, out.value, out.length);
            *output_length = out.length;
        }
    }
    gss_release_buffer(&ignored, &out);
    return (major & GSS_S_CONTINUE_NEEDED) ? 1 : 0;
}

void adit_gss_delete(void **context) {
    if (*context) {
        OM_uint32 minor;
        gss_ctx_id_t ctx = (gss_ctx_id_t)*context;
        gss_delete_sec_context(&minor, &ctx, GSS_C_NO_BUFFER);
        *context = NULL;
    }
}

void adit_gss_free(void *pointer) { free(pointer); }
