/* Unit tests for the YAML -> protobuf-c loader (src/config/yaml_pb.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "skiff.test.pb-c.h"
#include "skiff/err.h"
#include "skiff/yaml_pb.h"

static int failures, checks;

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(c)) {                                                                                \
            failures++;                                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c);                  \
        }                                                                                          \
    } while (0)

static const ProtobufCMessageDescriptor *lookup(const char *name)
{
    if (!strcmp(name, "skiff.test.Inner"))
        return &skiff__test__inner__descriptor;
    if (!strcmp(name, "skiff.test.All"))
        return &skiff__test__all__descriptor;
    return NULL;
}

static Skiff__Test__All *parse_all(const char *y, struct sk_cfgerrs *e)
{
    ProtobufCMessage *m = NULL;
    sk_cfgerrs_init(e, "t.yaml");
    int rc = sk_yaml_pb_parse(y, strlen(y), &skiff__test__all__descriptor, lookup, &m, e);
    if (rc != 0) {
        fprintf(stderr, "unexpected failure for:\n%s\n", y);
        sk_cfgerrs_print(e, stderr);
    }
    return (Skiff__Test__All *)m;
}

/* Parses y that must succeed; returns message and frees errs. */
static Skiff__Test__All *ok(const char *y)
{
    struct sk_cfgerrs e;
    Skiff__Test__All *a = parse_all(y, &e);
    CHECK(a != NULL);
    sk_cfgerrs_free(&e);
    return a;
}

static void done(Skiff__Test__All *a)
{
    protobuf_c_message_free_unpacked(&a->base, NULL);
}

/* ---- success cases ---- */

static void test_scalars(void)
{
    Skiff__Test__All *a = ok("i32: -5\n"
                           "i64: \"9007199254740993\"\n"
                           "u32: 4294967295\n"
                           "u64: 18446744073709551615\n"
                           "s32: -2147483648\n"
                           "s64: -9223372036854775808\n"
                           "f32: '7'\n"
                           "f64: 1e3\n"
                           "sf32: -1\n"
                           "sf64: 2.0\n"
                           "fl: 1.5\n"
                           "db: -1e-3\n"
                           "b: true\n"
                           "str: hello world\n"
                           "by: aGVsbG8\n"
                           "color: GREEN\n"
                           "big: 11\n"
                           "longFieldName: camel\n"
                           "inner: {name: x, n: 3, tags: [a, b], child: {name: y}}\n");
    if (!a)
        return;
    CHECK(a->i32 == -5);
    CHECK(a->i64 == 9007199254740993LL);
    CHECK(a->u32 == 4294967295u);
    CHECK(a->u64 == 18446744073709551615ull);
    CHECK(a->s32 == INT32_MIN);
    CHECK(a->s64 == INT64_MIN);
    CHECK(a->f32 == 7);
    CHECK(a->f64 == 1000);
    CHECK(a->sf32 == -1);
    CHECK(a->sf64 == 2);
    CHECK(a->fl == 1.5f);
    CHECK(a->db == -1e-3);
    CHECK(a->b == 1);
    CHECK(!strcmp(a->str, "hello world"));
    CHECK(a->by.len == 5 && !memcmp(a->by.data, "hello", 5));
    CHECK(a->color == SKIFF__TEST__COLOR__GREEN);
    CHECK(a->big == SKIFF__TEST__BIG__B11);
    CHECK(!strcmp(a->long_field_name, "camel"));
    CHECK(a->inner && !strcmp(a->inner->name, "x") && a->inner->n == 3);
    CHECK(a->inner && a->inner->n_tags == 2 && !strcmp(a->inner->tags[1], "b"));
    CHECK(a->inner && a->inner->child && !strcmp(a->inner->child->name, "y"));
    done(a);

    /* plain scalars are accepted for strings; enums by number; base64 variants */
    a = ok("str: 80\ncolor: 3\nby: '-_8='\nb: false\nfl: .inf\ndb: NaN\n");
    if (a) {
        CHECK(!strcmp(a->str, "80"));
        CHECK(a->color == 3);
        CHECK(a->by.len == 2 && a->by.data[0] == 0xfb && a->by.data[1] == 0xff);
        CHECK(a->b == 0);
        CHECK(isinf(a->fl));
        CHECK(isnan(a->db));
        done(a);
    }
    a = ok("by: '+/8'\nstr: ''\n");
    if (a) {
        CHECK(a->by.len == 2 && a->by.data[0] == 0xfb && a->by.data[1] == 0xff);
        CHECK(!strcmp(a->str, ""));
        done(a);
    }
    /* null / empty = unset */
    a = ok("str: null\ninner: ~\ni32:\nr_i32: null\nm_int: ~\n");
    if (a) {
        CHECK(a->str[0] == 0 && !a->inner && a->i32 == 0 && a->n_r_i32 == 0 && !a->m_int);
        done(a);
    }
    /* JSON is YAML */
    a = ok("{\"i32\": 1, \"str\": \"x\", \"rStr\": [\"a\"], \"inner\": {\"n\": 2}}");
    if (a) {
        CHECK(a->i32 == 1 && !strcmp(a->str, "x") && a->n_r_str == 1 && a->inner->n == 2);
        done(a);
    }
}

static void test_repeated_and_maps(void)
{
    Skiff__Test__All *a = ok("r_i32: [1, 2, 3]\n"
                           "r_str: [a, 'b', 5]\n"
                           "r_inner:\n"
                           "  - name: one\n"
                           "  - {name: two, n: 2}\n"
                           "r_color: [RED, 2]\n"
                           "r_bytes: [YQ==, YmM]\n"
                           "r_db: [1, -.inf, 2.5]\n"
                           "r_b: [true, false]\n"
                           "r_u64: ['18446744073709551615', 0]\n"
                           "r_dur: [1s, 0.25s]\n"
                           "m_int: {a: 1, b: 2}\n"
                           "m_inner:\n"
                           "  x: {n: 1}\n"
                           "  'y z': {name: q}\n"
                           "m_ikey: {1: one, '-2': two}\n"
                           "m_str: {k: v}\n"
                           "m_bkey: {true: t, false: f}\n"
                           "m_ucolor: {'18446744073709551615': BLUE}\n");
    if (!a)
        return;
    CHECK(a->n_r_i32 == 3 && a->r_i32[2] == 3);
    CHECK(a->n_r_str == 3 && !strcmp(a->r_str[2], "5"));
    CHECK(a->n_r_inner == 2 && !strcmp(a->r_inner[1]->name, "two") && a->r_inner[1]->n == 2);
    CHECK(a->n_r_color == 2 && a->r_color[0] == 1 && a->r_color[1] == 2);
    CHECK(a->n_r_bytes == 2 && a->r_bytes[0].len == 1 && a->r_bytes[1].len == 2 &&
          !memcmp(a->r_bytes[1].data, "bc", 2));
    CHECK(a->n_r_db == 3 && isinf(a->r_db[1]) && a->r_db[1] < 0);
    CHECK(a->n_r_b == 2 && a->r_b[0] && !a->r_b[1]);
    CHECK(a->n_r_u64 == 2 && a->r_u64[0] == UINT64_MAX);
    CHECK(a->n_r_dur == 2 && a->r_dur[1]->nanos == 250000000);
    CHECK(a->n_m_int == 2 && !strcmp(a->m_int[1]->key, "b") && a->m_int[1]->value == 2);
    CHECK(a->n_m_inner == 2 && !strcmp(a->m_inner[1]->key, "y z") &&
          !strcmp(a->m_inner[1]->value->name, "q"));
    CHECK(a->n_m_ikey == 2 && a->m_ikey[1]->key == -2 && !strcmp(a->m_ikey[1]->value, "two"));
    CHECK(a->n_m_str == 1 && !strcmp(a->m_str[0]->value, "v"));
    CHECK(a->n_m_bkey == 2 && a->m_bkey[0]->key == 1 && a->m_bkey[1]->key == 0);
    CHECK(a->n_m_ucolor == 1 && a->m_ucolor[0]->key == UINT64_MAX && a->m_ucolor[0]->value == 3);
    done(a);

    a = ok("r_i32: []\nm_int: {}\n");
    if (a) {
        CHECK(a->n_r_i32 == 0 && a->n_m_int == 0);
        done(a);
    }
}

static void test_oneof(void)
{
    Skiff__Test__All *a = ok("o_inner: {name: z}\n");
    if (a) {
        CHECK(a->choice_case == SKIFF__TEST__ALL__CHOICE_O_INNER && !strcmp(a->o_inner->name, "z"));
        done(a);
    }
    a = ok("oStr: s\n");
    if (a) {
        CHECK(a->choice_case == SKIFF__TEST__ALL__CHOICE_O_STR && !strcmp(a->o_str, "s"));
        done(a);
    }
    a = ok("o_str: null\no_i64: '-7'\n");
    if (a) {
        CHECK(a->choice_case == SKIFF__TEST__ALL__CHOICE_O_I64 && a->o_i64 == -7);
        done(a);
    }
}

static void test_durations(void)
{
    static const struct {
        const char *s;
        long long sec;
        int nanos;
    } good[] = {
        {"1.5s", 1, 500000000},  {"0s", 0, 0},         {"-1s", -1, 0},
        {"0.000000001s", 0, 1},  {"300s", 300, 0},     {"-0.5s", 0, -500000000},
        {"315576000000s", 315576000000LL, 0},           {"-1.25s", -1, -250000000},
        {"'2s'", 2, 0},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char y[64];
        snprintf(y, sizeof(y), "dur: %s\n", good[i].s);
        Skiff__Test__All *a = ok(y);
        if (!a)
            continue;
        CHECK(a->dur && a->dur->seconds == good[i].sec && a->dur->nanos == good[i].nanos);
        done(a);
    }
    Skiff__Test__All *a = ok("ts: 1970-01-01T00:00:00Z\n");
    if (a) {
        CHECK(a->ts && a->ts->seconds == 0 && a->ts->nanos == 0);
        done(a);
    }
    a = ok("ts: '2024-02-29T12:00:00.5+01:00'\n");
    if (a) {
        CHECK(a->ts && a->ts->seconds == 1709204400LL && a->ts->nanos == 500000000);
        done(a);
    }
}

static void test_wrappers(void)
{
    Skiff__Test__All *a = ok("w_u32: 7\nw_b: false\nw_i64: '-9'\nw_u64: 9\nw_i32: -3\n"
                           "w_db: 0.5\nw_fl: 2\nw_str: 42\nw_by: AAE=\n");
    if (!a)
        return;
    CHECK(a->w_u32 && a->w_u32->value == 7);
    CHECK(a->w_b && a->w_b->value == 0);
    CHECK(a->w_i64 && a->w_i64->value == -9);
    CHECK(a->w_u64 && a->w_u64->value == 9);
    CHECK(a->w_i32 && a->w_i32->value == -3);
    CHECK(a->w_db && a->w_db->value == 0.5);
    CHECK(a->w_fl && a->w_fl->value == 2);
    CHECK(a->w_str && !strcmp(a->w_str->value, "42"));
    CHECK(a->w_by && a->w_by->value.len == 2 && a->w_by->value.data[1] == 1);
    done(a);
}

static void test_struct_value(void)
{
    Skiff__Test__All *a = ok("st: {a: 1, b: [true, 'x', null, \"2\"], c: {d: e}}\n"
                           "val: null\n"
                           "lv: [1, a]\n"
                           "empty: {}\n"
                           "r_val: [~, 1.5, {k: v}, [], False]\n"
                           "m_st: {s: {x: y}}\n");
    if (!a)
        return;
    CHECK(a->st && a->st->n_fields == 3);
    if (a->st && a->st->n_fields == 3) {
        Google__Protobuf__Value *v = a->st->fields[0]->value;
        CHECK(!strcmp(a->st->fields[0]->key, "a"));
        CHECK(v->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE && v->number_value == 1);
        v = a->st->fields[1]->value;
        CHECK(v->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE &&
              v->list_value->n_values == 4);
        if (v->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE &&
            v->list_value->n_values == 4) {
            CHECK(v->list_value->values[0]->bool_value == 1);
            CHECK(v->list_value->values[1]->kind_case ==
                  GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE);
            CHECK(v->list_value->values[2]->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE);
            CHECK(v->list_value->values[3]->kind_case ==
                  GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE);
        }
        v = a->st->fields[2]->value;
        CHECK(v->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE &&
              !strcmp(v->struct_value->fields[0]->value->string_value, "e"));
    }
    CHECK(a->val && a->val->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE);
    CHECK(a->lv && a->lv->n_values == 2);
    CHECK(a->empty != NULL);
    CHECK(a->n_r_val == 5 && a->r_val[0]->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE &&
          a->r_val[4]->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE);
    CHECK(a->n_m_st == 1 && a->m_st[0]->value->n_fields == 1);
    done(a);
}

static void test_any(void)
{
    Skiff__Test__All *a = ok("any:\n"
                           "  '@type': type.googleapis.com/skiff.test.Inner\n"
                           "  name: packed\n"
                           "  n: 7\n"
                           "r_any:\n"
                           "  - {'@type': type.googleapis.com/google.protobuf.Duration, value: 1.5s}\n"
                           "  - '@type': type.googleapis.com/google.protobuf.Struct\n"
                           "    value: {k: [1]}\n"
                           "  - '@type': example.com/x/skiff.test.All\n"
                           "    any: {'@type': type.googleapis.com/skiff.test.Inner, name: deep}\n"
                           "  - '@type': type.googleapis.com/google.protobuf.UInt32Value\n"
                           "    value: 5\n"
                           "  - '@type': type.googleapis.com/skiff.test.Inner\n");
    if (!a)
        return;
    CHECK(a->any && !strcmp(a->any->type_url, "type.googleapis.com/skiff.test.Inner"));
    if (a->any) {
        Skiff__Test__Inner *in = skiff__test__inner__unpack(NULL, a->any->value.len, a->any->value.data);
        CHECK(in && !strcmp(in->name, "packed") && in->n == 7);
        if (in)
            skiff__test__inner__free_unpacked(in, NULL);
    }
    CHECK(a->n_r_any == 5);
    if (a->n_r_any == 5) {
        Google__Protobuf__Duration *d =
            google__protobuf__duration__unpack(NULL, a->r_any[0]->value.len, a->r_any[0]->value.data);
        CHECK(d && d->seconds == 1 && d->nanos == 500000000);
        if (d)
            google__protobuf__duration__free_unpacked(d, NULL);
        Google__Protobuf__Struct *s =
            google__protobuf__struct__unpack(NULL, a->r_any[1]->value.len, a->r_any[1]->value.data);
        CHECK(s && s->n_fields == 1 && !strcmp(s->fields[0]->key, "k"));
        if (s)
            google__protobuf__struct__free_unpacked(s, NULL);
        Skiff__Test__All *x =
            skiff__test__all__unpack(NULL, a->r_any[2]->value.len, a->r_any[2]->value.data);
        CHECK(x && x->any && !strcmp(a->r_any[2]->type_url, "example.com/x/skiff.test.All"));
        if (x && x->any) {
            Skiff__Test__Inner *in = skiff__test__inner__unpack(NULL, x->any->value.len, x->any->value.data);
            CHECK(in && !strcmp(in->name, "deep"));
            if (in)
                skiff__test__inner__free_unpacked(in, NULL);
        }
        if (x)
            skiff__test__all__free_unpacked(x, NULL);
        Google__Protobuf__UInt32Value *w = google__protobuf__uint32_value__unpack(
            NULL, a->r_any[3]->value.len, a->r_any[3]->value.data);
        CHECK(w && w->value == 5);
        if (w)
            google__protobuf__uint32_value__free_unpacked(w, NULL);
        CHECK(a->r_any[4]->value.len == 0);
    }
    done(a);
}

static void test_anchors(void)
{
    Skiff__Test__All *a = ok("inner: &base {name: base, n: 1, tags: [t]}\n"
                           "r_inner:\n"
                           "  - *base\n"
                           "  - <<: *base\n"
                           "    n: 2\n"
                           "  - <<: [{name: first}, *base]\n"
                           "m_inner: {k: *base}\n");
    if (!a)
        return;
    CHECK(a->n_r_inner == 3);
    if (a->n_r_inner == 3) {
        CHECK(!strcmp(a->r_inner[0]->name, "base") && a->r_inner[0]->n == 1);
        CHECK(!strcmp(a->r_inner[1]->name, "base") && a->r_inner[1]->n == 2 &&
              a->r_inner[1]->n_tags == 1);
        CHECK(!strcmp(a->r_inner[2]->name, "first") && a->r_inner[2]->n == 1);
    }
    CHECK(a->n_m_inner == 1 && a->m_inner[0]->value->n == 1);
    done(a);
}

/* Looks up a recorded position by exact path. */
static int pos_of(const struct sk_cfgerrs *e, const char *path, int *line, int *col)
{
    for (size_t i = 0; i < e->npos; i++)
        if (!strcmp(e->pos[i].path, path)) {
            *line = e->pos[i].line;
            *col = e->pos[i].col;
            return 1;
        }
    return 0;
}

static void test_positions(void)
{
    const char *y = "inner:\n"
                    "  name: x\n"
                    "r_inner:\n"
                    "  - n: 1\n"
                    "  - name: b\n"
                    "    n: 2\n"
                    "m_inner:\n"
                    "  'k\"q': {n: 3}\n"
                    "any:\n"
                    "  '@type': type.googleapis.com/skiff.test.Inner\n"
                    "  tags: [a, b]\n"
                    "st: {a: {b: 1}, 'c d': 2}\n";
    struct sk_cfgerrs e;
    Skiff__Test__All *a = parse_all(y, &e);
    CHECK(a != NULL);
    int l = 0, c = 0;
    CHECK(pos_of(&e, "inner.name", &l, &c) && l == 2 && c == 3);
    CHECK(pos_of(&e, "r_inner[1]", &l, &c) && l == 5 && c == 5);
    CHECK(pos_of(&e, "r_inner[1].n", &l, &c) && l == 6 && c == 5);
    CHECK(pos_of(&e, "m_inner[\"k\\\"q\"].n", &l, &c) && l == 8 && c == 11);
    CHECK(pos_of(&e, "any.tags[1]", &l, &c) && l == 11 && c == 13);
    CHECK(pos_of(&e, "st.a.b", &l, &c) && l == 12 && c == 10);
    CHECK(pos_of(&e, "st[\"c d\"]", &l, &c) && l == 12 && c == 17);
    /* a later error by path only gets the longest recorded prefix's position */
    sk_cfgerrs_add(&e, "r_inner[1].n", "translator says no");
    CHECK(e.n == 1 && e.v[0].line == 6 && e.v[0].col == 5);
    if (a)
        done(a);
    sk_cfgerrs_free(&e);
}

static void test_roundtrip(void)
{
    const char *y = "i32: -5\ni64: -6\nu32: 7\nu64: 8\ns32: -9\ns64: -10\nf32: 11\nf64: 12\n"
                    "sf32: -13\nsf64: -14\nfl: 1.5\ndb: 2.25\nb: true\nstr: s\nby: AQID\n"
                    "color: BLUE\ninner: {name: n, tags: [x], child: {n: 1}}\n"
                    "r_i32: [1, -2]\nr_str: [a]\nr_inner: [{n: 1}, {}]\nr_color: [RED]\n"
                    "r_bytes: [AA==]\nr_db: [0.5]\nr_b: [true]\nr_u64: [1]\n"
                    "m_int: {a: 1}\nm_inner: {b: {n: 2}}\nm_ikey: {3: c}\nm_bkey: {true: x}\n"
                    "o_inner: {name: o}\n"
                    "any: {'@type': type.googleapis.com/skiff.test.Inner, n: 4}\n"
                    "dur: 1.5s\nts: 2000-01-01T00:00:00Z\nw_u32: 1\nw_str: s\n"
                    "st: {k: [1, {a: b}]}\nval: x\nlv: [true]\nempty: {}\n"
                    "child: {child: {i32: 1}}\n";
    Skiff__Test__All *a = ok(y);
    if (!a)
        return;
    size_t n = protobuf_c_message_get_packed_size(&a->base);
    uint8_t *buf = malloc(n);
    protobuf_c_message_pack(&a->base, buf);
    Skiff__Test__All *b = skiff__test__all__unpack(NULL, n, buf);
    CHECK(b != NULL);
    if (b) {
        size_t n2 = protobuf_c_message_get_packed_size(&b->base);
        uint8_t *buf2 = malloc(n2);
        protobuf_c_message_pack(&b->base, buf2);
        CHECK(n2 == n && !memcmp(buf, buf2, n));
        free(buf2);
        CHECK(b->i32 == -5 && b->sf64 == -14 && b->color == 3 && b->n_m_ikey == 1 &&
              b->m_ikey[0]->key == 3 && b->choice_case == SKIFF__TEST__ALL__CHOICE_O_INNER &&
              b->dur->seconds == 1 && b->ts->seconds == 946684800 && b->child->child->i32 == 1 &&
              !strcmp(b->st->fields[0]->key, "k"));
        skiff__test__all__free_unpacked(b, NULL);
    }
    free(buf);
    done(a);
}

/* ---- error cases ---- */

struct bad {
    const char *yaml;
    const char *msg; /* substring of the first error */
    int line, col;
    const char *path;
};

static const struct bad bads[] = {
    {"clustr: 1\n", "unknown field 'clustr' in skiff.test.All", 1, 1, ""},
    {"inner:\n  nme: x\n", "unknown field 'nme' in skiff.test.Inner (did you mean 'name'?)", 2, 3,
     "inner"},
    {"dur: 5\n", "expected a duration like \"1.5s\", got \"5\"", 1, 6, "dur"},
    {"dur: 1m\n", "expected a duration like \"1.5s\", got \"1m\"", 1, 6, "dur"},
    {"dur: 1.5\n", "expected a duration like \"1.5s\", got \"1.5\"", 1, 6, "dur"},
    {"dur: 1.0000000001s\n", "expected a duration like", 1, 6, "dur"},
    {"dur: 315576000001s\n", "out of range", 1, 6, "dur"},
    {"dur: '- 1s'\n", "expected a duration", 1, 6, "dur"},
    {"dur: {seconds: 1}\n", "expected a duration like \"1.5s\", got a mapping", 1, 6, "dur"},
    {"ts: 2024-02-30T00:00:00Z\n", "RFC 3339", 1, 5, "ts"},
    {"r_i32: 5\n", "expected a list, got a scalar", 1, 8, "r_i32"},
    {"r_inner: {n: 1}\n", "expected a list, got a mapping", 1, 10, "r_inner"},
    {"i32: 3000000000\n", "integer \"3000000000\" out of range for int32", 1, 6, "i32"},
    {"i32: 1.5\n", "expected an integer (int32), got \"1.5\"", 1, 6, "i32"},
    {"i64: 9223372036854775808\n", "out of range for int64", 1, 6, "i64"},
    {"u32: -1\n", "out of range for uint32", 1, 6, "u32"},
    {"u64: abc\n", "expected a non-negative integer (uint64), got \"abc\"", 1, 6, "u64"},
    {"fl: 1e39\n", "out of range for float", 1, 5, "fl"},
    {"db: 1e999\n", "out of range for double", 1, 5, "db"},
    {"db: 0x10\n", "expected a number (double)", 1, 5, "db"},
    {"b: yes\n", "expected true or false, got \"yes\"", 1, 4, "b"},
    {"b: True\n", "expected true or false", 1, 4, "b"},
    {"str: {a: 1}\n", "expected a string, got a mapping", 1, 6, "str"},
    {"str: [a]\n", "expected a string, got a list", 1, 6, "str"},
    {"color: PURPLE\n",
     "unknown value \"PURPLE\" for enum skiff.test.Color; expected one of: COLOR_UNSPECIFIED, "
     "RED, GREEN, BLUE",
     1, 8, "color"},
    {"big: X\n", "B7, ... (4 more)", 1, 6, "big"},
    {"by: '!!!!'\n", "expected base64 bytes", 1, 5, "by"},
    {"by: 'A'\n", "expected base64 bytes", 1, 5, "by"},
    {"i32: 1\ni32: 2\n", "duplicate key \"i32\" (first at line 1)", 2, 1, ""},
    {"long_field_name: a\nlongFieldName: b\n", "field 'long_field_name' given twice", 2, 1,
     "long_field_name"},
    {"o_str: a\no_i64: 1\n", "'o_str' and 'o_i64' cannot both be set", 2, 8, "o_i64"},
    {"any: {'@type': type.googleapis.com/nope.X}\n",
     "unknown type \"type.googleapis.com/nope.X\" in \"@type\"", 1, 16, "any"},
    {"any: {name: x}\n", "missing \"@type\" in google.protobuf.Any", 1, 6, "any"},
    {"any: {'@type': skiff.test.Inner}\n", "invalid type URL", 1, 16, "any"},
    {"any: {'@type': type.googleapis.com/skiff.test.Inner, n: x}\n", "expected an integer", 1, 57,
     "any.n"},
    {"any: {'@type': type.googleapis.com/google.protobuf.Duration, value: 1}\n",
     "expected a duration", 1, 69, "any.value"},
    {"any: {'@type': type.googleapis.com/google.protobuf.Duration, seconds: 1}\n",
     "unknown field \"seconds\" in google.protobuf.Any holding google.protobuf.Duration", 1, 62,
     "any"},
    {"any: 5\n", "expected a mapping with \"@type\"", 1, 6, "any"},
    {"a: [1, 2\n", "invalid YAML", 2, 1, ""},
    {"a: *nope\n", "invalid YAML: unknown or recursive alias", 1, 4, ""},
    {"i32: 1\n---\ni32: 2\n", "more than one YAML document", 2, 1, ""},
    {"", "empty configuration", 0, 0, ""},
    {"# only a comment\n", "empty configuration", 0, 0, ""},
    {"---\n...\n", "empty configuration", 2, 1, ""},
    {"- a\n- b\n", "expected a mapping (skiff.test.All), got a list", 1, 1, ""},
    {"hello\n", "expected a mapping (skiff.test.All), got \"hello\"", 1, 1, ""},
    {"r_inner:\n  - n: x\n", "expected an integer (int32), got \"x\"", 2, 8, "r_inner[0].n"},
    {"r_inner:\n  - ~\n", "null is not allowed as a list item", 2, 5, "r_inner[0]"},
    {"m_inner: {k: {n: x}}\n", "expected an integer", 1, 18, "m_inner[\"k\"].n"},
    {"m_int: {k: ~}\n", "null is not allowed as a map value", 1, 12, "m_int[\"k\"]"},
    {"m_ikey: {x: y}\n", "expected an integer (int32), got \"x\"", 1, 10, "m_ikey[\"x\"]"},
    {"m_int: [1]\n", "expected a mapping, got a list", 1, 8, "m_int"},
    {"m_int: {a: 1, a: 2}\n", "duplicate key \"a\"", 1, 15, "m_int"},
    {"w_u32: {value: 1}\n", "expected a uint32 value (google.protobuf.UInt32Value), got a mapping",
     1, 8, "w_u32"},
    {"w_u32: -1\n", "out of range for uint32", 1, 8, "w_u32"},
    {"st: [1]\n", "expected a mapping (google.protobuf.Struct), got a list", 1, 5, "st"},
    {"lv: {a: 1}\n", "expected a list (google.protobuf.ListValue)", 1, 5, "lv"},
    {"inner: 5\n", "expected a mapping (skiff.test.Inner), got \"5\"", 1, 8, "inner"},
    {"<<: 5\n", "merge key '<<' expects a mapping or a list of mappings", 1, 5, ""},
    {"? [a]\n: 1\n", "mapping keys must be field names, got a list", 1, 3, ""},
    {"str: \"a\\0b\"\n", "NUL character", 1, 6, "str"},
};

static void test_errors(void)
{
    for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
        const struct bad *b = &bads[i];
        struct sk_cfgerrs e;
        ProtobufCMessage *m = (ProtobufCMessage *)1;
        sk_cfgerrs_init(&e, "t.yaml");
        int rc = sk_yaml_pb_parse(b->yaml, strlen(b->yaml), &skiff__test__all__descriptor, lookup,
                                  &m, &e);
        int good = rc == SK_ERR_CONFIG && m == NULL && e.n >= 1 && strstr(e.v[0].msg, b->msg) &&
                   e.v[0].line == b->line && e.v[0].col == b->col && !strcmp(e.v[0].path, b->path);
        checks++;
        if (!good) {
            failures++;
            fprintf(stderr, "bad case %zu failed (rc %d), input:\n%s\nwant %d:%d %s: %s\ngot:\n", i,
                    rc, b->yaml, b->line, b->col, b->path, b->msg);
            sk_cfgerrs_print(&e, stderr);
        }
        sk_cfgerrs_free(&e);
    }
}

static int nerrs(const char *y, const struct sk_yaml_pb_opts *o, const char *want)
{
    struct sk_cfgerrs e;
    ProtobufCMessage *m = NULL;
    sk_cfgerrs_init(&e, "t.yaml");
    int rc = sk_yaml_pb_parse_opts(y, strlen(y), &skiff__test__all__descriptor, lookup, o, &m, &e);
    int n = (int)e.n, found = 0;
    for (size_t i = 0; i < e.n; i++)
        if (want && strstr(e.v[i].msg, want))
            found = 1;
    if (want && !found) {
        fprintf(stderr, "expected an error containing '%s', got:\n", want);
        sk_cfgerrs_print(&e, stderr);
        n = -1;
    }
    CHECK(rc != 0 && m == NULL);
    sk_cfgerrs_free(&e);
    return n;
}

static void test_limits(void)
{
    /* several errors collected, not just the first */
    CHECK(nerrs("i32: x\nu32: y\ninner: {n: z, bogus: 1}\nr_i32: [1, q, 3]\n", NULL, NULL) == 5);

    /* nesting too deep: no stack overflow */
    char *deep = malloc(200000);
    size_t o = 0;
    for (int i = 0; i < 20000; i++)
        o += (size_t)sprintf(deep + o, "{child: ");
    o += (size_t)sprintf(deep + o, "{}");
    for (int i = 0; i < 20000; i++)
        deep[o++] = '}';
    deep[o] = 0;
    CHECK(nerrs(deep, NULL, "nesting too deep (limit 64)") == 1);
    o = 0;
    for (int i = 0; i < 30000; i++)
        deep[o++] = '[';
    deep[o] = 0;
    CHECK(nerrs(deep, NULL, "nesting too deep (limit 64)") == 1);
    o = 0;
    o += (size_t)sprintf(deep + o, "val: ");
    for (int i = 0; i < 1000; i++)
        o += (size_t)sprintf(deep + o, "[");
    for (int i = 0; i < 1000; i++)
        deep[o++] = ']';
    deep[o] = 0;
    CHECK(nerrs(deep, NULL, "nesting too deep") >= 1);
    free(deep);

    /* alias cycle (an anchor referenced inside itself) */
    CHECK(nerrs("child: &a {child: *a}\n", NULL, "recursive alias") == 1);
    CHECK(nerrs("child: &a {<<: *a}\n", NULL, NULL) >= 1);
    /* billion laughs */
    const char *bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                       "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                       "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
                       "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                       "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
                       "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
                       "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n"
                       "st: {k: *g}\n";
    struct sk_yaml_pb_opts lim = {.max_nodes = 50000};
    CHECK(nerrs(bomb, &lim, "configuration too large") >= 1);
    const char *bomb2 = "r_str: &a [x, x, x, x, x, x, x, x, x, x]\n"
                        "st: &b {a: *a, b: *a, c: *a, d: *a, e: *a, f: *a, g: *a, h: *a}\n"
                        "m_st: &c {a: *b, b: *b, c: *b, d: *b, e: *b, f: *b, g: *b, h: *b}\n"
                        "child: &d {m_st: *c, r_val: [*c, *c, *c, *c, *c, *c, *c, *c]}\n"
                        "r_val: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n";
    CHECK(nerrs(bomb2, &lim, "configuration too large") >= 1);

    /* error cap */
    char *many = malloc(100000);
    o = 0;
    for (int i = 0; i < 500; i++)
        o += (size_t)sprintf(many + o, "f%d: 1\n", i);
    many[o] = 0;
    struct sk_yaml_pb_opts cap = {.max_errors = 10};
    CHECK(nerrs(many, &cap, "too many errors (10), giving up") == 11);
    free(many);
}


static void test_misc(void)
{
    /* a merged key spelled in camelCase does not clash with the written one */
    Skiff__Test__All *a = ok("inner: &b {n: 1}\nchild: {<<: {longFieldName: m, i32: 4}, "
                             "long_field_name: w}\n");
    if (a) {
        CHECK(a->child && !strcmp(a->child->long_field_name, "w") && a->child->i32 == 4);
        done(a);
    }
    /* other root types: Struct, Duration */
    struct sk_cfgerrs e;
    ProtobufCMessage *m = NULL;
    sk_cfgerrs_init(&e, "t.yaml");
    const char *y = "a: {b: [1, two]}\n";
    CHECK(sk_yaml_pb_parse(y, strlen(y), &google__protobuf__struct__descriptor, NULL, &m, &e) == 0);
    CHECK(m && ((Google__Protobuf__Struct *)m)->n_fields == 1);
    protobuf_c_message_free_unpacked(m, NULL);
    y = "2.5s";
    CHECK(sk_yaml_pb_parse(y, strlen(y), &google__protobuf__duration__descriptor, NULL, &m, &e) ==
          0);
    CHECK(m && ((Google__Protobuf__Duration *)m)->nanos == 500000000);
    protobuf_c_message_free_unpacked(m, NULL);
    CHECK(e.n == 0);
    sk_cfgerrs_free(&e);

    /* depth reached through aliases is caught by the walker, with a path */
    char buf[4096];
    size_t o = (size_t)sprintf(buf, "st:\n  k0: &a0 {n: 1}\n");
    for (int i = 1; i < 12; i++)
        o += (size_t)sprintf(buf + o, "  k%d: &a%d {child: {child: {child: {child: {child: "
                                      "{child: *a%d}}}}}}\n", i, i, i - 1);
    CHECK(nerrs(buf, NULL, "nesting too deep (limit 64)") >= 1);
    /* "value" is a plain field name for ordinary messages inside Any */
    CHECK(nerrs("any: {'@type': type.googleapis.com/skiff.test.Inner, value: 1}\n", NULL,
                "unknown field 'value' in skiff.test.Inner") == 1);
    /* long keys are shortened in messages */
    CHECK(nerrs("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                "aaaaaaaaaaaaaaaaaaaaaaa: 1\n",
                NULL, "aaaa...' in skiff.test.All") == 1);
}

int main(void)
{
    test_scalars();
    test_repeated_and_maps();
    test_oneof();
    test_durations();
    test_wrappers();
    test_struct_value();
    test_any();
    test_anchors();
    test_positions();
    test_roundtrip();
    test_errors();
    test_limits();
    test_misc();
    printf("yaml_pb: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
