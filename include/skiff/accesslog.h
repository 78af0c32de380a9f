/* Access logs: rendering (Envoy's %OPERATORS%, text or JSON) and per-worker
 * sinks. A worker appends finished lines to its own buffer per sink and
 * writes them once per loop iteration with a non-blocking write; a sink that
 * cannot keep up (a full pipe, a stalled disk) loses lines, counted in
 * access_log_dropped, and never stalls requests. */
#ifndef SKIFF_ACCESSLOG_H
#define SKIFF_ACCESSLOG_H

#include <stddef.h>

#include "skiff/buf.h"
#include "skiff/model.h"

struct sk_stream;
struct sk_worker;

/* Log a finished stream to every access log of its HCM that passes its filter. */
void sk_access_log_stream(struct sk_stream *st);
/* The same for any list of access logs (tcp_proxy logs a connection through a
 * stream record filled by tcp_proxy.c: no method, status 0). */
void sk_access_log_write(struct sk_stream *st, const struct sk_access_log *logs, size_t n);
/* Render one line (exposed for unit tests). */
void sk_access_log_render(const struct sk_al_format *f, const struct sk_stream *st, double now,
                          struct sk_buf *out);
/* Close the worker's sinks (worker exit). */
void sk_access_log_worker_close(struct sk_worker *w);

#endif
