#include "CAditGSSAPI.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The system GSSAPI is loaded at run time (dlopen), not linked: the binary builds and runs on machines without
// Kerberos (no libkrb5-dev to build, no libgssapi_krb5 to start), and only Negotiate needs it. The few types and
// constants used here are the stable GSSAPI v2 C bindings (RFC 2744), declared here so no header is needed.

typedef uint32_t OM_uint32;
typedef struct { OM_uint32 length; void *elements; } gss_OID_desc;
typedef gss_OID_desc *gss_OID;
typedef struct { size_t length; void *value; } gss_buffer_desc;
typedef gss_buffer_desc *gss_buffer_t;
typedef void *gss_name_t;
typedef void *gss_ctx_id_t;
typedef void *gss_cred_id_t;
typedef void *gss_channel_bindings_t;

#define GSS_S_COMPLETE 0u
#define GSS_S_CONTINUE_NEEDED 1u
#define GSS_C_GSS_CODE 1
#define GSS_C_MECH_CODE 2
#define GSS_ERROR(x) ((x) & ((0377u << 24) | (0377u << 16)))

typedef OM_uint32 (*import_name_f)(OM_uint32 *, gss_buffer_t, gss_OID, gss_name_t *);
typedef OM_uint32 (*init_sec_context_f)(OM_uint32 *, gss_cred_id_t, gss_ctx_id_t *, gss_name_t, gss_OID, OM_uint32,
                                        OM_uint32, gss_channel_bindings_t, gss_buffer_t, gss_OID *, gss_buffer_t,
                                        OM_uint32 *, OM_uint32 *);
typedef OM_uint32 (*release_name_f)(OM_uint32 *, gss_name_t *);
typedef OM_uint32 (*release_buffer_f)(OM_uint32 *, gss_buffer_t);
typedef OM_uint32 (*delete_sec_context_f)(OM_uint32 *, gss_ctx_id_t *, gss_buffer_t);
typedef OM_uint32 (*display_status_f)(OM_uint32 *, OM_uint32, int, gss_OID, OM_uint32 *, gss_buffer_t);

static struct {
    import_name_f import_name;
    init_sec_context_f init_sec_context;
    release_name_f release_name;
    release_buffer_f release_buffer;
    delete_sec_context_f delete_sec_context;
    display_status_f display_status;
    char error[256];
    int loaded;
} gss;

static pthread_once_t gss_once = PTHREAD_ONCE_INIT;

static void gss_load(void) {
    const char *names[] = {"libgssapi_krb5.so.2", "libgssapi_krb5.so", "libgssapi.so.3", NULL};
    void *library = NULL;
    for (int i = 0; names[i] && !library; i++) library = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        snprintf(gss.error, sizeof gss.error,
                 "the system GSSAPI library (libgssapi_krb5.so.2) is not installed; on Debian: apt-get install libgssapi-krb5-2 krb5-user");
        return;
    }
    gss.import_name = (import_name_f)dlsym(library, "gss_import_name");
    gss.init_sec_context = (init_sec_context_f)dlsym(library, "gss_init_sec_context");
    gss.release_name = (release_name_f)dlsym(library, "gss_release_name");
    gss.release_buffer = (release_buffer_f)dlsym(library, "gss_release_buffer");
    gss.delete_sec_context = (delete_sec_context_f)dlsym(library, "gss_delete_sec_context");
    gss.display_status = (display_status_f)dlsym(library, "gss_display_status");
    if (!gss.import_name || !gss.init_sec_context || !gss.release_name || !gss.release_buffer ||
        !gss.delete_sec_context || !gss.display_status) {
        snprintf(gss.error, sizeof gss.error, "the system GSSAPI library lacks a GSSAPI v2 function");
        return;
    }
    gss.loaded = 1;
}

int adit_gss_available(char *error, size_t error_capacity) {
    pthread_once(&gss_once, gss_load);
    if (!gss.loaded && error && error_capacity) snprintf(error, error_capacity, "%s", gss.error);
    return gss.loaded;
}

// 1.3.6.1.5.5.2 (SPNEGO) and 1.2.840.113554.1.2.1.4 (GSS_C_NT_HOSTBASED_SERVICE).
static gss_OID_desc spnego_mechanism = {6, (void *)"\x2b\x06\x01\x05\x05\x02"};
static gss_OID_desc hostbased_service = {10, (void *)"\x2a\x86\x48\x86\xf7\x12\x01\x02\x01\x04"};

static void describe(OM_uint32 major, OM_uint32 minor, char *error, size_t capacity) {
    OM_uint32 status, more = 0;
    gss_buffer_desc text = {0, NULL};
    size_t used = 0;
    error[0] = 0;
    OM_uint32 codes[2] = {major, minor};
    int types[2] = {GSS_C_GSS_CODE, GSS_C_MECH_CODE};
    for (int i = 0; i < 2; i++) {
        if (codes[i] == 0) continue;
        more = 0;
        do {
            OM_uint32 ignored;
            status = gss.display_status(&ignored, codes[i], types[i], NULL, &more, &text);
            if (status != GSS_S_COMPLETE) break;
            int n = snprintf(error + used, capacity - used, "%s%.*s", used ? "; " : "", (int)text.length,
                             (const char *)text.value);
            gss.release_buffer(&ignored, &text);
            if (n < 0 || (size_t)n >= capacity - used) return;
            used += (size_t)n;
        } while (more != 0);
    }
}

int adit_gss_step(void **context, const char *service, const void *input, size_t input_length,
                  void **output, size_t *output_length, char *error, size_t error_capacity) {
    *output = NULL;
    *output_length = 0;
    if (!adit_gss_available(error, error_capacity)) return -1;
    OM_uint32 major, minor;
    gss_name_t target = NULL;
    gss_buffer_desc name = {strlen(service), (void *)service};
    major = gss.import_name(&minor, &name, &hostbased_service, &target);
    if (GSS_ERROR(major)) {
        describe(major, minor, error, error_capacity);
        return -1;
    }
    gss_buffer_desc in = {input_length, (void *)input};
    gss_buffer_desc out = {0, NULL};
    gss_ctx_id_t ctx = *context;
    major = gss.init_sec_context(&minor, NULL, &ctx, target, &spnego_mechanism, 0, 0, NULL,
                                 input_length ? &in : NULL, NULL, &out, NULL, NULL);
    *context = ctx;
    OM_uint32 ignored;
    gss.release_name(&ignored, &target);
    if (GSS_ERROR(major)) {
        describe(major, minor, error, error_capacity);
        gss.release_buffer(&ignored, &out);
        return -1;
    }
    if (out.length) {
        *output = malloc(out.length);
        if (*output) {
            memcpy(*output, out.value, out.length);
            *output_length = out.length;
        }
    }
    gss.release_buffer(&ignored, &out);
    return (major & GSS_S_CONTINUE_NEEDED) ? 1 : 0;
}

void adit_gss_delete(void **context) {
    if (*context && gss.loaded) {
        OM_uint32 minor;
        gss_ctx_id_t ctx = *context;
        gss.delete_sec_context(&minor, &ctx, NULL);
    }
    *context = NULL;
}

void adit_gss_free(void *pointer) { free(pointer); }
