/* `skiff chaos ...`: a small blocking HTTP/1.1 client of the admin's runtime
 * chaos API (/chaos/faults, see include/skiff/chaos.h). Runs instead of the
 * proxy (main.c dispatches here before normal start-up); one request, one
 * connection, bounded in time (connect 5 s, whole exchange 10 s) and size.
 *
 * Exit codes: 0 done, 1 the admin refused (its message is printed), 2 usage,
 * 3 the admin could not be reached. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "skiff/chaos.h"

#define RESP_MAX (1u << 20)

static void cli_usage(FILE *f)
{
    fprintf(f,
            "usage: skiff chaos add   [--admin IP:PORT] TARGET FAULT... --ttl DUR [options]\n"
            "       skiff chaos list  [--admin IP:PORT] [--json]\n"
            "       skiff chaos del   [--admin IP:PORT] ID\n"
            "       skiff chaos clear [--admin IP:PORT]        (kill switch: remove every rule)\n"
            "\n"
            "  --admin ADDR          the proxy's admin listener (default 127.0.0.1:15000)\n"
            "TARGET (one):\n"
            "  --cluster NAME | --route NAME | --vhost NAME | --listener NAME\n"
            "FAULT (one or more):\n"
            "  --abort STATUS        answer with this HTTP status (upstream leg: 500-599)\n"
            "  --abort-grpc CODE     answer with this gRPC status (downstream leg)\n"
            "  --reset               fail the attempt as an upstream reset (upstream leg)\n"
            "  --delay DUR           hold the request (200ms, 1.5s; a bare number is ms)\n"
            "  --rate-limit KBPS     limit the response body to KiB/s\n"
            "  --reset-after BYTES   cut the response after BYTES of body (h2: RST_STREAM,\n"
            "                        h1: close the connection)\n"
            "  --truncate-after BYTES  end the response early (h2: END_STREAM; h1: close)\n"
            "  --grpc-error-after BYTES  end with trailers grpc-status --grpc-error-status\n"
            "                        (default 14 UNAVAILABLE) after BYTES (h1: close)\n"
            "options:\n"
            "  --percent P           share of requests for every fault (default 100)\n"
            "  --abort-percent P  --delay-percent P  --rate-limit-percent P\n"
            "  --midstream-percent P                                per fault\n"
            "  --ttl DUR             required: the rule removes itself after DUR (30s, 5m;\n"
            "                        a bare number is seconds; at most 24h)\n"
            "  --upstream            act per upstream attempt, after the retry layer\n"
            "  --header NAME=VALUE   only requests with this header value (repeatable);\n"
            "                        NAME only: the header is present\n"
            "  --description TEXT    free text shown by list\n"
            "  --json                print the admin's JSON answer\n");
}

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("skiff chaos: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n(skiff chaos --help for usage)\n", stderr);
    va_end(ap);
    exit(2);
}

/* ---- a growable string for the request body ------------------------------------------- */

struct str {
    char *p;
    size_t n, cap;
};

static void sput(struct str *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sput(struct str *s, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(s->p ? s->p + s->n : NULL, s->p ? s->cap - s->n : 0, fmt, ap);
        va_end(ap);
        if (w < 0)
            return;
        if (s->p && s->n + (size_t)w < s->cap) {
            s->n += (size_t)w;
            return;
        }
        size_t nc = (s->cap ? s->cap * 2 : 256) + (size_t)w;
        char *np = realloc(s->p, nc);
        if (!np) {
            fprintf(stderr, "skiff chaos: out of memory\n");
            exit(1);
        }
        s->p = np;
        s->cap = nc;
    }
}

static void sjson(struct str *s, const char *v)
{
    sput(s, "\"");
    for (; *v; v++) {
        unsigned char c = (unsigned char)*v;
        if (c == '"' || c == '\\')
            sput(s, "\\%c", c);
        else if (c < 0x20)
            sput(s, "\\u%04x", c);
        else
            sput(s, "%c", c);
    }
    sput(s, "\"");
}

/* ---- argument values ------------------------------------------------------------------- */

/* "200ms", "1.5s", "2m", "1h"; a bare number is in `bare_unit_s` seconds. */
static double duration_s(const char *opt, const char *v, double bare_unit_s)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || errno || !isfinite(d) || d < 0)
        die_usage("%s: '%s' is not a duration", opt, v);
    double unit = bare_unit_s;
    if (!*end)
        unit = bare_unit_s;
    else if (strcmp(end, "ms") == 0)
        unit = 0.001;
    else if (strcmp(end, "s") == 0)
        unit = 1;
    else if (strcmp(end, "m") == 0)
        unit = 60;
    else if (strcmp(end, "h") == 0)
        unit = 3600;
    else
        die_usage("%s: unknown unit in '%s' (ms, s, m, h)", opt, v);
    return d * unit;
}

static double number(const char *opt, const char *v)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || *end || errno || !isfinite(d))
        die_usage("%s: '%s' is not a number", opt, v);
    return d;
}

static long integer(const char *opt, const char *v)
{
    char *end;
    errno = 0;
    long l = strtol(v, &end, 10);
    if (end == v || *end || errno)
        die_usage("%s: '%s' is not an integer", opt, v);
    return l;
}

/* ---- the HTTP exchange -------------------------------------------------------------------- */

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Wait for fd to be ready for `ev` until `deadline`. */
static int wait_fd(int fd, short ev, double deadline)
{
    for (;;) {
        double left = deadline - mono();
        if (left <= 0)
            return -1;
        struct pollfd p = {fd, ev, 0};
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

static int connect_admin(const char *admin, char *hostport, size_t hpl)
{
    char host[256], port[16];
    snprintf(hostport, hpl, "%s", admin);
    const char *colon = strrchr(admin, ':');
    if (!colon || colon == admin || !colon[1] || strlen(colon + 1) >= sizeof(port))
        die_usage("--admin: '%s' is not IP:PORT", admin);
    size_t hl = (size_t)(colon - admin);
    if (admin[0] == '[' && hl >= 2 && admin[hl - 1] == ']') {
        admin++;
        hl -= 2;
    }
    if (hl >= sizeof(host))
        die_usage("--admin: host too long");
    memcpy(host, admin, hl);
    host[hl] = 0;
    snprintf(port, sizeof(port), "%s", colon + 1);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    int gr = getaddrinfo(host, port, &hints, &res);
    if (gr != 0) {
        fprintf(stderr, "skiff chaos: cannot resolve admin address '%s': %s\n", host,
                gai_strerror(gr));
        return -1;
    }
    int fd = -1;
    int err = 0;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) < 0 && errno != EINPROGRESS) {
            err = errno;
            close(fd);
            fd = -1;
            continue;
        }
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        if (wait_fd(fd, POLLOUT, mono() + 5.0) < 0) {
            err = ETIMEDOUT;
            close(fd);
            fd = -1;
        } else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr) {
            err = soerr ? soerr : errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        fprintf(stderr, "skiff chaos: cannot connect to the admin at %s:%s: %s\n", host, port,
                strerror(err));
    return fd;
}

/* One request; the response body (NUL-terminated, malloc'd) in *body.
 * Returns the HTTP status, or -1 (message printed) if no answer. */
static int http(const char *admin, const char *method, const char *path, const char *body,
                char **out)
{
    char hostport[300];
    *out = NULL;
    int fd = connect_admin(admin, hostport, sizeof(hostport));
    if (fd < 0)
        return -1;
    double deadline = mono() + 10.0;
    struct str req = {0};
    size_t bl = body ? strlen(body) : 0;
    sput(&req, "%s %s HTTP/1.1\r\nhost: %s\r\nuser-agent: skiff-chaos\r\nconnection: close\r\n",
         method, path, hostport);
    if (body)
        sput(&req, "content-type: application/json\r\ncontent-length: %zu\r\n", bl);
    sput(&req, "\r\n%s", body ? body : "");
    size_t off = 0;
    int rc = -1;
    struct str resp = {0};
    while (off < req.n) {
        if (wait_fd(fd, POLLOUT, deadline) < 0)
            goto timeout;
        ssize_t w = send(fd, req.p + off, req.n - off, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
            fprintf(stderr, "skiff chaos: sending to the admin: %s\n", strerror(errno));
            goto done;
        }
        if (w > 0)
            off += (size_t)w;
    }
    for (;;) {
        if (wait_fd(fd, POLLIN, deadline) < 0)
            goto timeout;
        char buf[4096];
        ssize_t r = recv(fd, buf, sizeof(buf), 0);
        if (r == 0)
            break;
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            fprintf(stderr, "skiff chaos: reading from the admin: %s\n", strerror(errno));
            goto done;
        }
        if (resp.n + (size_t)r > RESP_MAX) {
            fprintf(stderr, "skiff chaos: the admin's answer is larger than %u bytes\n", RESP_MAX);
            goto done;
        }
        sput(&resp, "%.*s", (int)r, buf);
    }
    int status = 0;
    if (!resp.p || sscanf(resp.p, "HTTP/1.%*d %d", &status) != 1 || status < 100) {
        fprintf(stderr, "skiff chaos: the admin sent no HTTP response\n");
        goto done;
    }
    const char *b = strstr(resp.p, "\r\n\r\n");
    *out = strdup(b ? b + 4 : "");
    rc = status;
    goto done;
timeout:
    fprintf(stderr, "skiff chaos: the admin did not answer within 10 s\n");
done:
    close(fd);
    free(req.p);
    free(resp.p);
    return rc;
}

/* Print the admin's error: its {"error": "..."} message when it has one. */
static int report_error(int status, const char *body)
{
    const char *e = body ? strstr(body, "\"error\": \"") : NULL;
    if (e) {
        e += 10;
        fprintf(stderr, "skiff chaos: admin answered %d: ", status);
        for (; *e && *e != '"'; e++) {
            if (*e == '\\' && e[1])
                e++;
            fputc(*e, stderr);
        }
        fputc('\n', stderr);
    } else {
        fprintf(stderr, "skiff chaos: admin answered %d: %s", status, body ? body : "");
    }
    return 1;
}

/* ---- sub-commands ---------------------------------------------------------------------------- */

enum {
    O_ADMIN = 256,
    O_CLUSTER,
    O_ROUTE,
    O_VHOST,
    O_LISTENER,
    O_ABORT,
    O_ABORT_GRPC,
    O_RESET,
    O_DELAY,
    O_RL,
    O_PERCENT,
    O_APCT,
    O_DPCT,
    O_RPCT,
    O_TTL,
    O_UPSTREAM,
    O_HEADER,
    O_DESC,
    O_JSON,
    O_HELP,
    O_RESET_AFTER,
    O_TRUNC_AFTER,
    O_GRPC_AFTER,
    O_GRPC_STATUS,
    O_MPCT,
};

int sk_chaos_cli(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        cli_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    bool add = strcmp(cmd, "add") == 0, list = strcmp(cmd, "list") == 0,
         del = strcmp(cmd, "del") == 0 || strcmp(cmd, "delete") == 0,
         clear = strcmp(cmd, "clear") == 0;
    if (!add && !list && !del && !clear)
        die_usage("unknown command '%s' (add, list, del, clear)", cmd);
    static const struct option lo[] = {
        {"admin", required_argument, 0, O_ADMIN},
        {"cluster", required_argument, 0, O_CLUSTER},
        {"route", required_argument, 0, O_ROUTE},
        {"vhost", required_argument, 0, O_VHOST},
        {"listener", required_argument, 0, O_LISTENER},
        {"abort", required_argument, 0, O_ABORT},
        {"abort-grpc", required_argument, 0, O_ABORT_GRPC},
        {"reset", no_argument, 0, O_RESET},
        {"delay", required_argument, 0, O_DELAY},
        {"rate-limit", required_argument, 0, O_RL},
        {"percent", required_argument, 0, O_PERCENT},
        {"abort-percent", required_argument, 0, O_APCT},
        {"delay-percent", required_argument, 0, O_DPCT},
        {"rate-limit-percent", required_argument, 0, O_RPCT},
        {"ttl", required_argument, 0, O_TTL},
        {"upstream", no_argument, 0, O_UPSTREAM},
        {"header", required_argument, 0, O_HEADER},
        {"description", required_argument, 0, O_DESC},
        {"json", no_argument, 0, O_JSON},
        {"help", no_argument, 0, O_HELP},
        {"reset-after", required_argument, 0, O_RESET_AFTER},
        {"truncate-after", required_argument, 0, O_TRUNC_AFTER},
        {"grpc-error-after", required_argument, 0, O_GRPC_AFTER},
        {"grpc-error-status", required_argument, 0, O_GRPC_STATUS},
        {"midstream-percent", required_argument, 0, O_MPCT},
        {0, 0, 0, 0},
    };
    const char *admin = "127.0.0.1:15000";
    const char *tkind = NULL, *tname = NULL;
    long abort_http = -1, abort_grpc = -1;
    bool reset = false, upstream = false, json = false;
    double delay_ms = -1, rl = -1, pct = -1, apct = -1, dpct = -1, rpct = -1, ttl = -1, mpct = -1;
    const char *mid_action = NULL;
    long mid_bytes = -1, mid_grpc = -1;
    const char *desc = NULL;
    const char *hdrs[SK_CHAOS_MAX_HEADERS];
    size_t nh = 0;
    int c;
    optind = 1;
    int sub_argc = argc - 1;
    char **sub_argv = argv + 1;
    while ((c = getopt_long(sub_argc, sub_argv, "", lo, NULL)) != -1) {
        if (!add && c != O_ADMIN && c != O_JSON && c != O_HELP && c != '?')
            die_usage("'%s' takes only --admin%s", cmd, list ? " and --json" : "");
        switch (c) {
        case O_ADMIN:
            admin = optarg;
            break;
        case O_CLUSTER:
        case O_ROUTE:
        case O_VHOST:
        case O_LISTENER:
            if (tkind)
                die_usage("one target only (--cluster, --route, --vhost or --listener)");
            tkind = c == O_CLUSTER ? "cluster"
                    : c == O_ROUTE ? "route"
                    : c == O_VHOST ? "vhost"
                                   : "listener";
            tname = optarg;
            break;
        case O_ABORT:
            abort_http = integer("--abort", optarg);
            break;
        case O_ABORT_GRPC:
            abort_grpc = integer("--abort-grpc", optarg);
            break;
        case O_RESET:
            reset = true;
            break;
        case O_DELAY:
            delay_ms = floor(duration_s("--delay", optarg, 0.001) * 1000 + 0.5);
            break;
        case O_RL:
            rl = (double)integer("--rate-limit", optarg);
            break;
        case O_PERCENT:
            pct = number("--percent", optarg);
            break;
        case O_APCT:
            apct = number("--abort-percent", optarg);
            break;
        case O_DPCT:
            dpct = number("--delay-percent", optarg);
            break;
        case O_RPCT:
            rpct = number("--rate-limit-percent", optarg);
            break;
        case O_TTL:
            ttl = duration_s("--ttl", optarg, 1);
            break;
        case O_UPSTREAM:
            upstream = true;
            break;
        case O_HEADER:
            if (nh >= SK_CHAOS_MAX_HEADERS)
                die_usage("at most %d --header options", SK_CHAOS_MAX_HEADERS);
            hdrs[nh++] = optarg;
            break;
        case O_DESC:
            desc = optarg;
            break;
        case O_JSON:
            json = true;
            break;
        case O_RESET_AFTER:
        case O_TRUNC_AFTER:
        case O_GRPC_AFTER:
            if (mid_action)
                die_usage("one of --reset-after, --truncate-after, --grpc-error-after");
            mid_action = c == O_RESET_AFTER   ? "reset"
                         : c == O_TRUNC_AFTER ? "truncate"
                                              : "grpc_error";
            mid_bytes = integer(c == O_RESET_AFTER   ? "--reset-after"
                                : c == O_TRUNC_AFTER ? "--truncate-after"
                                                     : "--grpc-error-after",
                                optarg);
            if (mid_bytes < 0)
                die_usage("byte counts are >= 0");
            break;
        case O_GRPC_STATUS:
            mid_grpc = integer("--grpc-error-status", optarg);
            break;
        case O_MPCT:
            mpct = number("--midstream-percent", optarg);
            break;
        case O_HELP:
            cli_usage(stdout);
            return 0;
        default:
            die_usage("bad option");
        }
    }
    char *resp = NULL;
    int status;
    if (list) {
        if (optind < sub_argc)
            die_usage("unexpected argument '%s'", sub_argv[optind]);
        status =
            http(admin, "GET", json ? "/chaos/faults" : "/chaos/faults?format=text", NULL, &resp);
        if (status < 0)
            return 3;
        int rc = status == 200 ? (fputs(resp, stdout), 0) : report_error(status, resp);
        free(resp);
        return rc;
    }
    if (clear) {
        if (optind < sub_argc)
            die_usage("unexpected argument '%s'", sub_argv[optind]);
        status = http(admin, "DELETE", "/chaos/faults", NULL, &resp);
        if (status < 0)
            return 3;
        int rc = 0;
        unsigned long n = 0;
        const char *d = strstr(resp, "\"deleted\": ");
        if (status != 200)
            rc = report_error(status, resp);
        else if (json)
            fputs(resp, stdout);
        else
            printf("removed %lu rule(s)\n", d ? strtoul(d + 11, NULL, 10) : n);
        free(resp);
        return rc;
    }
    if (del) {
        if (optind + 1 != sub_argc)
            die_usage("del takes one rule id");
        const char *id = sub_argv[optind];
        if (!*id || strspn(id, "0123456789") != strlen(id) || strlen(id) > 18)
            die_usage("'%s' is not a rule id", id);
        char path[64];
        snprintf(path, sizeof(path), "/chaos/faults/%s", id);
        status = http(admin, "DELETE", path, NULL, &resp);
        if (status < 0)
            return 3;
        int rc = 0;
        if (status != 200)
            rc = report_error(status, resp);
        else if (json)
            fputs(resp, stdout);
        else
            printf("removed rule %s\n", id);
        free(resp);
        return rc;
    }
    /* add */
    if (optind < sub_argc)
        die_usage("unexpected argument '%s'", sub_argv[optind]);
    if (!tkind)
        die_usage("add needs a target: --cluster, --route, --vhost or --listener");
    if ((abort_http >= 0) + (abort_grpc >= 0) + reset > 1)
        die_usage("one of --abort, --abort-grpc, --reset");
    if (abort_http < 0 && abort_grpc < 0 && !reset && delay_ms < 0 && rl < 0 && !mid_action)
        die_usage("add needs a fault: --abort, --abort-grpc, --reset, --delay, --rate-limit, "
                  "--reset-after, --truncate-after or --grpc-error-after");
    if (mid_grpc >= 0 && (!mid_action || strcmp(mid_action, "grpc_error") != 0))
        die_usage("--grpc-error-status goes with --grpc-error-after");
    if (ttl < 0)
        die_usage("add needs --ttl (the rule removes itself after it)");
    struct str b = {0};
    sput(&b, "{\"target\": {\"%s\": ", tkind);
    sjson(&b, tname);
    sput(&b, "}, \"leg\": \"%s\", \"ttl_s\": %.3f", upstream ? "upstream" : "downstream", ttl);
    if (desc) {
        sput(&b, ", \"description\": ");
        sjson(&b, desc);
    }
    if (nh) {
        sput(&b, ", \"headers\": [");
        for (size_t i = 0; i < nh; i++) {
            const char *eq = strchr(hdrs[i], '=');
            char name[256];
            size_t nl = eq ? (size_t)(eq - hdrs[i]) : strlen(hdrs[i]);
            if (nl == 0 || nl >= sizeof(name))
                die_usage("--header: '%s' is not NAME=VALUE", hdrs[i]);
            memcpy(name, hdrs[i], nl);
            name[nl] = 0;
            sput(&b, "%s{\"name\": ", i ? ", " : "");
            sjson(&b, name);
            if (eq) {
                sput(&b, ", \"exact\": ");
                sjson(&b, eq + 1);
                sput(&b, "}");
            } else {
                sput(&b, ", \"present\": true}");
            }
        }
        sput(&b, "]");
    }
    sput(&b, ", \"fault\": {");
    const char *sep = "";
#define PCT(specific) ((specific) >= 0 ? (specific) : pct >= 0 ? pct : 100.0)
    if (delay_ms >= 0) {
        sput(&b, "\"delay\": {\"fixed_ms\": %.0f, \"percent\": %.6g}", delay_ms, PCT(dpct));
        sep = ", ";
    }
    if (abort_http >= 0 || abort_grpc >= 0 || reset) {
        sput(&b, "%s\"abort\": {", sep);
        if (abort_http >= 0)
            sput(&b, "\"http_status\": %ld", abort_http);
        else if (abort_grpc >= 0)
            sput(&b, "\"grpc_status\": %ld", abort_grpc);
        else
            sput(&b, "\"reset\": true");
        sput(&b, ", \"percent\": %.6g}", PCT(apct));
        sep = ", ";
    }
    if (rl >= 0) {
        sput(&b, "%s\"rate_limit\": {\"kbps\": %.0f, \"percent\": %.6g}", sep, rl, PCT(rpct));
        sep = ", ";
    }
    if (mid_action) {
        sput(&b, "%s\"midstream\": {\"action\": \"%s\", \"after_bytes\": %ld", sep, mid_action,
             mid_bytes);
        if (mid_grpc >= 0)
            sput(&b, ", \"grpc_status\": %ld", mid_grpc);
        sput(&b, ", \"percent\": %.6g}", PCT(mpct));
    }
#undef PCT
    sput(&b, "}}");
    status = http(admin, "POST", "/chaos/faults", b.p, &resp);
    free(b.p);
    if (status < 0)
        return 3;
    int rc = 0;
    if (status != 200) {
        rc = report_error(status, resp);
    } else if (json) {
        fputs(resp, stdout);
    } else {
        const char *id = strstr(resp, "\"id\": ");
        printf("added rule %lu (expires in %.1f s)\n", id ? strtoul(id + 6, NULL, 10) : 0ul, ttl);
    }
    free(resp);
    return rc;
}
