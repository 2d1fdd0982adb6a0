/*
 * Helpers for deepwasm plugins written in C (clang + wasi-libc, bindings from
 * wit-bindgen's C generator).
 *
 * The C counterpart of the Rust SDK's helpers (`plugins/sdk`): JSON configs
 * and arguments read field by field with errors that name the field, error
 * values, a token bitset that builds `token-set`s, UTF-8 and whitespace
 * helpers, a growable byte buffer that writes JSON, and constructors for
 * sampler decisions and tool results.
 *
 * The bindings must be generated with the world renamed to `deepwasm`
 * (`wit-bindgen c wit --world reward --rename-world deepwasm`), so that every
 * world's bindings are `deepwasm.h` / `deepwasm.c` with the same type names
 * (`deepwasm_string_t`, ...) and this one header serves every world. The
 * sampler helpers are there when the sampler world's header is.
 *
 * Everything is `static inline`: include the header in any number of files.
 * Allocation failures abort (`__builtin_trap`): the host turns that into a
 * trap of this instance, and an allocation past the memory limit traps there
 * anyway.
 *
 * Ownership follows the canonical ABI: the arguments of an exported function
 * belong to the plugin (free them with the generated `*_free` functions or
 * keep them), and what it returns must be allocated with malloc (the
 * generated post-return functions free it).
 */
#ifndef DEEPWASM_PLUGIN_H
#define DEEPWASM_PLUGIN_H

#include "deepwasm.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef deepwasm_plugin_types_error_t dw_error_t;

/* ---- memory ------------------------------------------------------------- */

static inline void *dw_alloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) __builtin_trap();
    return p;
}

static inline void *dw_realloc(void *p, size_t n) {
    p = realloc(p, n ? n : 1);
    if (!p) __builtin_trap();
    return p;
}

static inline void *dw_zalloc(size_t n) {
    void *p = calloc(n ? n : 1, 1);
    if (!p) __builtin_trap();
    return p;
}

/* ---- byte buffers --------------------------------------------------------- */

/* A growable byte string; `ptr` is NUL-terminated once anything was written. */
typedef struct {
    char *ptr;
    size_t len;
    size_t cap;
} dw_buf_t;

static inline void dw_buf_reserve(dw_buf_t *b, size_t more) {
    if (b->len + more + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap * 2 : 64;
    while (cap < b->len + more + 1) cap *= 2;
    b->ptr = (char *)dw_realloc(b->ptr, cap);
    b->cap = cap;
}

static inline void dw_buf_push(dw_buf_t *b, const void *data, size_t n) {
    dw_buf_reserve(b, n);
    if (n) memcpy(b->ptr + b->len, data, n);
    b->len += n;
    b->ptr[b->len] = 0;
}

static inline void dw_buf_puts(dw_buf_t *b, const char *s) { dw_buf_push(b, s, strlen(s)); }

static inline void dw_buf_putc(dw_buf_t *b, char c) { dw_buf_push(b, &c, 1); }

static inline void dw_buf_vprintf(dw_buf_t *b, const char *fmt, va_list ap) {
    va_list copy;
    va_copy(copy, ap);
    int n = vsnprintf(NULL, 0, fmt, copy);
    va_end(copy);
    if (n < 0) return;
    dw_buf_reserve(b, (size_t)n);
    vsnprintf(b->ptr + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
}

__attribute__((format(printf, 2, 3))) static inline void dw_buf_printf(dw_buf_t *b,
                                                                       const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    dw_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

/* Append `s` as a JSON string literal, escaped as serde_json escapes it:
 * `"` `\` and control characters only (`\n` `\r` `\t` `\b` `\f`, else
 * `\u00xx`); other bytes, UTF-8 included, as they are. */
static inline void dw_buf_json_string(dw_buf_t *b, const uint8_t *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    dw_buf_putc(b, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        const char *esc = NULL;
        char u[7];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (c < 0x20) {
                u[0] = '\\', u[1] = 'u', u[2] = '0', u[3] = '0';
                u[4] = hex[c >> 4], u[5] = hex[c & 15], u[6] = 0;
                esc = u;
            }
        }
        if (esc) {
            dw_buf_push(b, s + run, i - run);
            dw_buf_puts(b, esc);
            run = i + 1;
        }
    }
    dw_buf_push(b, s + run, n - run);
    dw_buf_putc(b, '"');
}

/* Hand the buffer's bytes over as a WIT string (the buffer is emptied). */
static inline deepwasm_string_t dw_buf_into_string(dw_buf_t *b) {
    deepwasm_string_t s = {(uint8_t *)b->ptr, b->len};
    if (!s.ptr) s.ptr = (uint8_t *)dw_alloc(1);
    b->ptr = NULL;
    b->len = b->cap = 0;
    return s;
}

static inline void dw_buf_free(dw_buf_t *b) {
    free(b->ptr);
    b->ptr = NULL;
    b->len = b->cap = 0;
}

/* A malloc'd WIT string copied from `n` bytes. */
static inline deepwasm_string_t dw_string_n(const void *s, size_t n) {
    deepwasm_string_t out = {(uint8_t *)dw_alloc(n), n};
    if (n) memcpy(out.ptr, s, n);
    return out;
}

static inline deepwasm_string_t dw_string(const char *s) { return dw_string_n(s, strlen(s)); }

/* Whether a WIT string equals a C string. */
static inline bool dw_string_eq(const deepwasm_string_t *s, const char *c) {
    size_t n = strlen(c);
    return s->len == n && memcmp(s->ptr, c, n) == 0;
}

/* ---- errors ---------------------------------------------------------------- */

/* Set `err` to the error case `tag` with a printf-formatted message; returns
 * false, so that an export can `return dw_error(err, ...)`. */
__attribute__((format(printf, 3, 4))) static inline bool dw_error(dw_error_t *err, uint8_t tag,
                                                                  const char *fmt, ...) {
    dw_buf_t b = {0};
    va_list ap;
    va_start(ap, fmt);
    dw_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    err->tag = tag;
    /* Every case carries a string at the same place. */
    err->val.invalid_input = dw_buf_into_string(&b);
    return false;
}

#define dw_invalid_input(err, ...) dw_error((err), DEEPWASM_PLUGIN_TYPES_ERROR_INVALID_INPUT, __VA_ARGS__)
#define dw_not_found(err, ...) dw_error((err), DEEPWASM_PLUGIN_TYPES_ERROR_NOT_FOUND, __VA_ARGS__)
#define dw_failed(err, ...) dw_error((err), DEEPWASM_PLUGIN_TYPES_ERROR_FAILED, __VA_ARGS__)

/* ---- UTF-8 and whitespace ------------------------------------------------- */

/* Decode the code point at `s[*i]` (valid UTF-8, as WIT strings are) and
 * move `*i` past it. */
static inline uint32_t dw_utf8_next(const uint8_t *s, size_t n, size_t *i) {
    uint8_t c = s[(*i)++];
    if (c < 0x80) return c;
    int more = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : 1;
    uint32_t cp = c & (0x3f >> more);
    while (more-- && *i < n) cp = (cp << 6) | (s[(*i)++] & 0x3f);
    return cp;
}

/* Decode valid UTF-8 into a malloc'd array of code points; `*count` is its length. */
static inline uint32_t *dw_utf8_decode(const uint8_t *s, size_t n, size_t *count) {
    uint32_t *out = (uint32_t *)dw_alloc(sizeof(uint32_t) * (n + 1));
    size_t i = 0, k = 0;
    while (i < n) out[k++] = dw_utf8_next(s, n, &i);
    *count = k;
    return out;
}

/* Append the UTF-8 encoding of `cp`. */
static inline void dw_buf_put_utf8(dw_buf_t *b, uint32_t cp) {
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp, n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3f)), n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | cp >> 12), u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (char)(0x80 | (cp & 0x3f)), n = 3;
    } else {
        u[0] = (char)(0xf0 | cp >> 18), u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3f)), u[3] = (char)(0x80 | (cp & 0x3f)), n = 4;
    }
    dw_buf_push(b, u, n);
}

/* Unicode White_Space, the set Rust's `char::is_whitespace` uses. */
static inline bool dw_is_whitespace(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

/* The length of `s[..n]` without its trailing whitespace. */
static inline size_t dw_trim_end(const uint8_t *s, size_t n) {
    while (n > 0) {
        size_t start = n - 1;
        while (start > 0 && (s[start] & 0xc0) == 0x80) start--;
        size_t i = start;
        if (!dw_is_whitespace(dw_utf8_next(s, n, &i))) break;
        n = start;
    }
    return n;
}

/* Whether `s[..n]` is empty or only whitespace. */
static inline bool dw_is_blank(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n)
        if (!dw_is_whitespace(dw_utf8_next(s, n, &i))) return false;
    return true;
}

/* The first position of `needle` in `hay`, or -1. */
static inline long dw_find(const uint8_t *hay, size_t n, const char *needle) {
    size_t m = strlen(needle);
    if (m > n) return -1;
    const uint8_t first = (uint8_t)needle[0];
    for (size_t i = 0; i + m <= n; i++) {
        const uint8_t *p = (const uint8_t *)memchr(hay + i, first, n - m + 1 - i);
        if (!p) return -1;
        i = (size_t)(p - hay);
        if (memcmp(p, needle, m) == 0) return (long)i;
    }
    return -1;
}

/* ---- JSON ------------------------------------------------------------------ */

typedef enum {
    DW_JSON_NULL,
    DW_JSON_BOOL,
    DW_JSON_NUMBER,
    DW_JSON_STRING,
    DW_JSON_ARRAY,
    DW_JSON_OBJECT,
} dw_json_kind_t;

typedef struct dw_json dw_json_t;
typedef struct dw_json_member dw_json_member_t;

/* A parsed JSON value. Strings are UTF-8 with their length (and a NUL after). */
struct dw_json {
    dw_json_kind_t kind;
    bool boolean;
    double number;
    char *str;
    size_t len;
    dw_json_t *items;          /* an array's values */
    dw_json_member_t *members; /* an object's fields, in order */
    size_t count;
};

struct dw_json_member {
    char *key;
    size_t key_len;
    dw_json_t value;
};

typedef struct {
    const uint8_t *s;
    size_t n, i;
    int depth;
    const char *error;
} dw_json_parser_t;

static inline void dw_json_free(dw_json_t *v) {
    free(v->str);
    for (size_t i = 0; v->items && i < v->count; i++) dw_json_free(&v->items[i]);
    for (size_t i = 0; v->members && i < v->count; i++) {
        free(v->members[i].key);
        dw_json_free(&v->members[i].value);
    }
    free(v->items);
    free(v->members);
    memset(v, 0, sizeof *v);
}

static inline void dw_json_ws(dw_json_parser_t *p) {
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' ||
                           p->s[p->i] == '\r'))
        p->i++;
}

static inline bool dw_json_fail(dw_json_parser_t *p, const char *why) {
    if (!p->error) p->error = why;
    return false;
}

static inline int dw_json_hex4(dw_json_parser_t *p) {
    if (p->i + 4 > p->n) return -1;
    int v = 0;
    for (int k = 0; k < 4; k++) {
        uint8_t c = p->s[p->i++];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return -1;
    }
    return v;
}

static inline bool dw_json_string(dw_json_parser_t *p, char **out, size_t *len) {
    dw_buf_t b = {0};
    p->i++; /* the opening quote */
    for (;;) {
        if (p->i >= p->n) {
            dw_buf_free(&b);
            return dw_json_fail(p, "EOF while parsing a string");
        }
        uint8_t c = p->s[p->i];
        if (c == '"') {
            p->i++;
            break;
        }
        if (c < 0x20) {
            dw_buf_free(&b);
            return dw_json_fail(p, "control character (\\u0000-\\u001F) found while parsing a string");
        }
        if (c != '\\') {
            size_t start = p->i;
            while (p->i < p->n && p->s[p->i] != '"' && p->s[p->i] != '\\' && p->s[p->i] >= 0x20)
                p->i++;
            dw_buf_push(&b, p->s + start, p->i - start);
            continue;
        }
        p->i++;
        if (p->i >= p->n) {
            dw_buf_free(&b);
            return dw_json_fail(p, "EOF while parsing a string");
        }
        char e = (char)p->s[p->i++];
        switch (e) {
        case '"': dw_buf_putc(&b, '"'); break;
        case '\\': dw_buf_putc(&b, '\\'); break;
        case '/': dw_buf_putc(&b, '/'); break;
        case 'b': dw_buf_putc(&b, '\b'); break;
        case 'f': dw_buf_putc(&b, '\f'); break;
        case 'n': dw_buf_putc(&b, '\n'); break;
        case 'r': dw_buf_putc(&b, '\r'); break;
        case 't': dw_buf_putc(&b, '\t'); break;
        case 'u': {
            int u = dw_json_hex4(p);
            if (u < 0) {
                dw_buf_free(&b);
                return dw_json_fail(p, "invalid escape");
            }
            uint32_t cp = (uint32_t)u;
            if (u >= 0xd800 && u < 0xdc00) {
                int lo = -1;
                if (p->i + 1 < p->n && p->s[p->i] == '\\' && p->s[p->i + 1] == 'u') {
                    p->i += 2;
                    lo = dw_json_hex4(p);
                }
                if (lo < 0xdc00 || lo >= 0xe000) {
                    dw_buf_free(&b);
                    return dw_json_fail(p, "lone leading surrogate in hex escape");
                }
                cp = 0x10000 + (((uint32_t)u - 0xd800) << 10) + ((uint32_t)lo - 0xdc00);
            } else if (u >= 0xdc00 && u < 0xe000) {
                dw_buf_free(&b);
                return dw_json_fail(p, "unexpected end of hex escape");
            }
            dw_buf_put_utf8(&b, cp);
            break;
        }
        default:
            dw_buf_free(&b);
            return dw_json_fail(p, "invalid escape");
        }
    }
    *len = b.len;
    *out = b.ptr ? b.ptr : (char *)dw_zalloc(1);
    return true;
}

static inline bool dw_json_value(dw_json_parser_t *p, dw_json_t *v);

static inline bool dw_json_number(dw_json_parser_t *p, dw_json_t *v) {
    size_t start = p->i;
    if (p->s[p->i] == '-') p->i++;
    size_t digits = p->i;
    while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') p->i++;
    if (p->i == digits) return dw_json_fail(p, "invalid number");
    if (p->s[digits] == '0' && p->i - digits > 1) return dw_json_fail(p, "invalid number");
    if (p->i < p->n && p->s[p->i] == '.') {
        p->i++;
        size_t f = p->i;
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') p->i++;
        if (p->i == f) return dw_json_fail(p, "invalid number");
    }
    if (p->i < p->n && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
        p->i++;
        if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-')) p->i++;
        size_t f = p->i;
        while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') p->i++;
        if (p->i == f) return dw_json_fail(p, "invalid number");
    }
    char tmp[64];
    size_t len = p->i - start;
    if (len < sizeof tmp) {
        memcpy(tmp, p->s + start, len);
        tmp[len] = 0;
        v->number = strtod(tmp, NULL);
    } else {
        char *big = (char *)dw_alloc(len + 1);
        memcpy(big, p->s + start, len);
        big[len] = 0;
        v->number = strtod(big, NULL);
        free(big);
    }
    v->kind = DW_JSON_NUMBER;
    return true;
}

static inline bool dw_json_literal(dw_json_parser_t *p, const char *word) {
    size_t m = strlen(word);
    if (p->i + m > p->n || memcmp(p->s + p->i, word, m) != 0)
        return dw_json_fail(p, "expected value");
    p->i += m;
    return true;
}

static inline bool dw_json_value(dw_json_parser_t *p, dw_json_t *v) {
    memset(v, 0, sizeof *v);
    dw_json_ws(p);
    if (p->i >= p->n) return dw_json_fail(p, "EOF while parsing a value");
    uint8_t c = p->s[p->i];
    switch (c) {
    case 'n':
        v->kind = DW_JSON_NULL;
        return dw_json_literal(p, "null");
    case 't':
        v->kind = DW_JSON_BOOL, v->boolean = true;
        return dw_json_literal(p, "true");
    case 'f':
        v->kind = DW_JSON_BOOL, v->boolean = false;
        return dw_json_literal(p, "false");
    case '"':
        v->kind = DW_JSON_STRING;
        return dw_json_string(p, &v->str, &v->len);
    case '[':
    case '{': {
        bool object = c == '{';
        if (++p->depth > 128) return dw_json_fail(p, "recursion limit exceeded");
        v->kind = object ? DW_JSON_OBJECT : DW_JSON_ARRAY;
        p->i++;
        size_t cap = 0;
        dw_json_ws(p);
        if (p->i < p->n && p->s[p->i] == (object ? '}' : ']')) {
            p->i++;
            p->depth--;
            return true;
        }
        for (;;) {
            dw_json_ws(p);
            if (object) {
                if (p->i >= p->n) return dw_json_fail(p, "EOF while parsing an object");
                if (p->s[p->i] != '"') return dw_json_fail(p, "key must be a string");
                char *key;
                size_t key_len;
                if (!dw_json_string(p, &key, &key_len)) return false;
                dw_json_ws(p);
                if (p->i >= p->n || p->s[p->i] != ':') {
                    free(key);
                    return dw_json_fail(p, p->i >= p->n ? "EOF while parsing an object" : "expected `:`");
                }
                p->i++;
                dw_json_t item;
                if (!dw_json_value(p, &item)) {
                    free(key);
                    dw_json_free(&item);
                    return false;
                }
                /* A repeated key keeps its place and takes the new value. */
                size_t at = v->count;
                for (size_t k = 0; k < v->count; k++) {
                    if (v->members[k].key_len == key_len && memcmp(v->members[k].key, key, key_len) == 0) {
                        at = k;
                        break;
                    }
                }
                if (at < v->count) {
                    free(key);
                    dw_json_free(&v->members[at].value);
                    v->members[at].value = item;
                } else {
                    if (v->count == cap) {
                        cap = cap ? cap * 2 : 4;
                        v->members = (dw_json_member_t *)dw_realloc(v->members, cap * sizeof *v->members);
                    }
                    v->members[v->count].key = key;
                    v->members[v->count].key_len = key_len;
                    v->members[v->count].value = item;
                    v->count++;
                }
            } else {
                if (v->count == cap) {
                    cap = cap ? cap * 2 : 4;
                    v->items = (dw_json_t *)dw_realloc(v->items, cap * sizeof *v->items);
                }
                if (!dw_json_value(p, &v->items[v->count])) {
                    dw_json_free(&v->items[v->count]);
                    return false;
                }
                v->count++;
            }
            dw_json_ws(p);
            if (p->i >= p->n)
                return dw_json_fail(p, object ? "EOF while parsing an object" : "EOF while parsing a list");
            if (p->s[p->i] == ',') {
                p->i++;
                dw_json_ws(p);
                if (p->i < p->n && p->s[p->i] == (object ? '}' : ']'))
                    return dw_json_fail(p, "trailing comma");
                continue;
            }
            if (p->s[p->i] == (object ? '}' : ']')) {
                p->i++;
                p->depth--;
                return true;
            }
            return dw_json_fail(p, object ? "expected `,` or `}`" : "expected `,` or `]`");
        }
    }
    default:
        if (c == '-' || (c >= '0' && c <= '9')) return dw_json_number(p, v);
        return dw_json_fail(p, "expected value");
    }
}

/* Parse one JSON document. On failure `*error` is set to a message with the
 * line and column ("expected value at line 1 column 1"), malloc'd. */
static inline bool dw_json_parse(const uint8_t *s, size_t n, dw_json_t *out, char **error) {
    dw_json_parser_t p = {s, n, 0, 0, NULL};
    bool ok = dw_json_value(&p, out);
    if (ok) {
        dw_json_ws(&p);
        if (p.i < n) ok = dw_json_fail(&p, "trailing characters");
    }
    if (ok) return true;
    dw_json_free(out);
    size_t line = 1, column = 0;
    size_t upto = p.i < n ? p.i + 1 : n;
    for (size_t k = 0; k < upto; k++) {
        if (s[k] == '\n') line++, column = 0;
        else column++;
    }
    dw_buf_t b = {0};
    dw_buf_printf(&b, "%s at line %zu column %zu", p.error, line, column);
    *error = b.ptr;
    return false;
}

static inline const char *dw_json_kind_name(const dw_json_t *v) {
    switch (v->kind) {
    case DW_JSON_NULL: return "null";
    case DW_JSON_BOOL: return "a boolean";
    case DW_JSON_NUMBER: return "a number";
    case DW_JSON_STRING: return "a string";
    case DW_JSON_ARRAY: return "an array";
    default: return "an object";
    }
}

/* The field `name` of an object, or NULL. */
static inline const dw_json_t *dw_json_get(const dw_json_t *obj, const char *name) {
    if (obj->kind != DW_JSON_OBJECT) return NULL;
    size_t n = strlen(name);
    for (size_t i = 0; i < obj->count; i++)
        if (obj->members[i].key_len == n && memcmp(obj->members[i].key, name, n) == 0)
            return &obj->members[i].value;
    return NULL;
}

/* ---- configs and arguments ------------------------------------------------ */

/* A JSON object read field by field; every error names the field
 * (`config.words: expected an array of strings, got a string`). */
typedef struct {
    const char *what;
    dw_json_t root;
} dw_fields_t;

/* Parse `text`, which must be a JSON object (blank text reads as `{}`).
 * `what` names the document in errors ("config", "arguments"). */
static inline bool dw_fields_parse(dw_fields_t *f, const char *what, const deepwasm_string_t *text,
                                   dw_error_t *err) {
    f->what = what;
    memset(&f->root, 0, sizeof f->root);
    if (dw_is_blank(text->ptr, text->len)) {
        f->root.kind = DW_JSON_OBJECT;
        return true;
    }
    char *why = NULL;
    if (!dw_json_parse(text->ptr, text->len, &f->root, &why)) {
        dw_invalid_input(err, "%s: %s", what, why);
        free(why);
        return false;
    }
    if (f->root.kind != DW_JSON_OBJECT) {
        dw_invalid_input(err, "%s: expected a JSON object, got %s", what, dw_json_kind_name(&f->root));
        dw_json_free(&f->root);
        return false;
    }
    return true;
}

static inline void dw_fields_free(dw_fields_t *f) { dw_json_free(&f->root); }

/* An `invalid-input` error about the field `name`: "<what>.<name>: <why>". */
__attribute__((format(printf, 4, 5))) static inline bool dw_fields_error(const dw_fields_t *f,
                                                                         dw_error_t *err,
                                                                         const char *name,
                                                                         const char *fmt, ...) {
    dw_buf_t b = {0};
    dw_buf_printf(&b, "%s.%s: ", f->what, name);
    va_list ap;
    va_start(ap, fmt);
    dw_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    err->tag = DEEPWASM_PLUGIN_TYPES_ERROR_INVALID_INPUT;
    err->val.invalid_input = dw_buf_into_string(&b);
    return false;
}

/* Fail on any field not among the `n` names in `known`. */
static inline bool dw_fields_only(const dw_fields_t *f, const char *const *known, size_t n,
                                  dw_error_t *err) {
    for (size_t i = 0; i < f->root.count; i++) {
        const dw_json_member_t *m = &f->root.members[i];
        bool ok = false;
        for (size_t k = 0; k < n && !ok; k++)
            ok = strlen(known[k]) == m->key_len && memcmp(known[k], m->key, m->key_len) == 0;
        if (!ok) {
            dw_buf_t list = {0};
            for (size_t k = 0; k < n; k++) {
                if (k) dw_buf_puts(&list, ", ");
                dw_buf_puts(&list, known[k]);
            }
            dw_buf_t key = {0};
            dw_buf_push(&key, m->key, m->key_len);
            dw_fields_error(f, err, key.ptr, "unknown field; expected one of: %s", list.ptr);
            dw_buf_free(&list);
            dw_buf_free(&key);
            return false;
        }
    }
    return true;
}

/* The field `name`, or NULL when absent or `null`. */
static inline const dw_json_t *dw_fields_raw(const dw_fields_t *f, const char *name) {
    const dw_json_t *v = dw_json_get(&f->root, name);
    return v && v->kind != DW_JSON_NULL ? v : NULL;
}

static inline bool dw_fields_expect(const dw_fields_t *f, const char *name, const dw_json_t *v,
                                    dw_json_kind_t kind, const char *expected, dw_error_t *err) {
    if (v->kind == kind) return true;
    return dw_fields_error(f, err, name, "expected %s, got %s", expected, dw_json_kind_name(v));
}

/* `*out` = the boolean field `name`, or `fallback` when absent. */
static inline bool dw_fields_get_bool(const dw_fields_t *f, const char *name, bool fallback,
                                      bool *out, dw_error_t *err) {
    const dw_json_t *v = dw_fields_raw(f, name);
    *out = fallback;
    if (!v) return true;
    if (!dw_fields_expect(f, name, v, DW_JSON_BOOL, "a boolean", err)) return false;
    *out = v->boolean;
    return true;
}

/* `*out` = the number field `name`, or `fallback` when absent. */
static inline bool dw_fields_get_number(const dw_fields_t *f, const char *name, double fallback,
                                        double *out, dw_error_t *err) {
    const dw_json_t *v = dw_fields_raw(f, name);
    *out = fallback;
    if (!v) return true;
    if (!dw_fields_expect(f, name, v, DW_JSON_NUMBER, "a number", err)) return false;
    *out = v->number;
    return true;
}

/* `*out` = the integer field `name` in [0, 2^32), or `fallback` when absent. */
static inline bool dw_fields_get_u32(const dw_fields_t *f, const char *name, uint32_t fallback,
                                     uint32_t *out, dw_error_t *err) {
    const dw_json_t *v = dw_fields_raw(f, name);
    *out = fallback;
    if (!v) return true;
    if (v->kind != DW_JSON_NUMBER || v->number != floor(v->number))
        return dw_fields_error(f, err, name, "expected an integer, got %s", dw_json_kind_name(v));
    if (v->number < 0 || v->number > 4294967295.0)
        return dw_fields_error(f, err, name, "%.0f is out of range [0, 4294967295]", v->number);
    *out = (uint32_t)v->number;
    return true;
}

/* `*out` = the string field `name` (its `str` and `len`), or NULL when absent. */
static inline bool dw_fields_get_string(const dw_fields_t *f, const char *name, const dw_json_t **out,
                                        dw_error_t *err) {
    const dw_json_t *v = dw_fields_raw(f, name);
    *out = NULL;
    if (!v) return true;
    if (!dw_fields_expect(f, name, v, DW_JSON_STRING, "a string", err)) return false;
    *out = v;
    return true;
}

/* Like `dw_fields_get_string`, but a missing field is an error. */
static inline bool dw_fields_require_string(const dw_fields_t *f, const char *name,
                                            const dw_json_t **out, dw_error_t *err) {
    if (!dw_fields_get_string(f, name, out, err)) return false;
    if (!*out) return dw_fields_error(f, err, name, "missing");
    return true;
}

/* `*out` = the array-of-strings field `name` (its `items` and `count`), or
 * NULL when absent. */
static inline bool dw_fields_get_string_list(const dw_fields_t *f, const char *name,
                                             const dw_json_t **out, dw_error_t *err) {
    const dw_json_t *v = dw_fields_raw(f, name);
    *out = NULL;
    if (!v) return true;
    if (!dw_fields_expect(f, name, v, DW_JSON_ARRAY, "an array of strings", err)) return false;
    for (size_t i = 0; i < v->count; i++) {
        if (v->items[i].kind != DW_JSON_STRING) {
            dw_buf_t item = {0};
            dw_buf_printf(&item, "%s[%zu]", name, i);
            dw_fields_error(f, err, item.ptr, "expected a string, got %s", dw_json_kind_name(&v->items[i]));
            dw_buf_free(&item);
            return false;
        }
    }
    *out = v;
    return true;
}

/* ---- token sets ------------------------------------------------------------ */

/* A set of token ids below `vocab_size`, one bit per token, in the layout of
 * the WIT `bitset` (token `t` is bit `t % 32` of word `t / 32`). */
typedef struct {
    uint32_t *words;
    uint32_t vocab_size;
} dw_token_bits_t;

static inline size_t dw_token_bits_words(uint32_t vocab_size) { return ((size_t)vocab_size + 31) / 32; }

/* The empty set over ids [0, vocab_size). */
static inline dw_token_bits_t dw_token_bits_new(uint32_t vocab_size) {
    dw_token_bits_t b = {(uint32_t *)dw_zalloc(dw_token_bits_words(vocab_size) * 4), vocab_size};
    return b;
}

static inline void dw_token_bits_free(dw_token_bits_t *b) {
    free(b->words);
    b->words = NULL;
}

static inline void dw_token_bits_insert(dw_token_bits_t *b, uint32_t t) {
    if (t < b->vocab_size) b->words[t / 32] |= 1u << (t % 32);
}

static inline bool dw_token_bits_contains(const dw_token_bits_t *b, uint32_t t) {
    return t < b->vocab_size && (b->words[t / 32] >> (t % 32)) & 1;
}

/* Add every token of `other` (same vocabulary size). */
static inline void dw_token_bits_union(dw_token_bits_t *b, const dw_token_bits_t *other) {
    size_t n = dw_token_bits_words(b->vocab_size);
    for (size_t i = 0; i < n; i++) b->words[i] |= other->words[i];
}

/* Make `b` a copy of `other`. */
static inline void dw_token_bits_assign(dw_token_bits_t *b, const dw_token_bits_t *other) {
    memcpy(b->words, other->words, dw_token_bits_words(b->vocab_size) * 4);
}

static inline size_t dw_token_bits_len(const dw_token_bits_t *b) {
    size_t n = dw_token_bits_words(b->vocab_size), count = 0;
    for (size_t i = 0; i < n; i++) count += (size_t)__builtin_popcount(b->words[i]);
    return count;
}

static inline bool dw_token_bits_is_empty(const dw_token_bits_t *b) {
    size_t n = dw_token_bits_words(b->vocab_size);
    for (size_t i = 0; i < n; i++)
        if (b->words[i]) return false;
    return true;
}

/* The set as a WIT `token-set` (malloc'd): a list of ids when there are
 * fewer ids than bitset words, else the bitset. */
static inline void dw_token_bits_to_token_set(const dw_token_bits_t *b,
                                              deepwasm_plugin_types_token_set_t *out) {
    size_t n = dw_token_bits_words(b->vocab_size), len = dw_token_bits_len(b);
    if (len < n) {
        uint32_t *ids = (uint32_t *)dw_alloc(len * 4), k = 0;
        for (size_t i = 0; i < n; i++)
            for (uint32_t w = b->words[i]; w; w &= w - 1)
                ids[k++] = (uint32_t)(i * 32) + (uint32_t)__builtin_ctz(w);
        out->tag = DEEPWASM_PLUGIN_TYPES_TOKEN_SET_IDS;
        out->val.ids.ptr = ids;
        out->val.ids.len = len;
    } else {
        uint32_t *words = (uint32_t *)dw_alloc(n * 4);
        memcpy(words, b->words, n * 4);
        out->tag = DEEPWASM_PLUGIN_TYPES_TOKEN_SET_BITSET;
        out->val.bitset.ptr = words;
        out->val.bitset.len = n;
    }
}

/* ---- samplers ------------------------------------------------------------- */

#ifdef EXPORTS_DEEPWASM_PLUGIN_CONTROLLER_DECISION_PICK

typedef exports_deepwasm_plugin_controller_prepared_t dw_prepared_t;
typedef exports_deepwasm_plugin_controller_decision_t dw_decision_t;

/* `decision::sample{}`: nothing allowed, denied or biased. */
static inline void dw_sample(dw_decision_t *d) {
    memset(d, 0, sizeof *d);
    d->tag = EXPORTS_DEEPWASM_PLUGIN_CONTROLLER_DECISION_SAMPLE;
}

/* `prepared::decided(sample{})`: no opinion, and no logits needed. */
static inline void dw_defer(dw_prepared_t *p) {
    memset(p, 0, sizeof *p);
    p->tag = EXPORTS_DEEPWASM_PLUGIN_CONTROLLER_PREPARED_DECIDED;
    dw_sample(&p->val.decided);
}

/* `prepared::decided(sample{deny: tokens})`. */
static inline void dw_deny(dw_prepared_t *p, const dw_token_bits_t *tokens) {
    dw_defer(p);
    p->val.decided.val.sample.deny.is_some = true;
    dw_token_bits_to_token_set(tokens, &p->val.decided.val.sample.deny.val);
}

/* `prepared::decided(sample{allow: tokens})`. */
static inline void dw_allow(dw_prepared_t *p, const dw_token_bits_t *tokens) {
    dw_defer(p);
    p->val.decided.val.sample.allow.is_some = true;
    dw_token_bits_to_token_set(tokens, &p->val.decided.val.sample.allow.val);
}

static inline int dw_cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Every special id (added tokens, BOS, every EOS), sorted, without
 * duplicates; malloc'd, `*count` long. */
static inline uint32_t *dw_special_token_ids(size_t *count) {
    deepwasm_plugin_tokenizer_tokenizer_info_t info;
    deepwasm_plugin_tokenizer_info(&info);
    deepwasm_plugin_tokenizer_list_special_token_t specials;
    deepwasm_plugin_tokenizer_special_tokens(&specials);
    size_t n = 0;
    uint32_t *ids = (uint32_t *)dw_alloc((specials.len + info.eos.len + 1) * 4);
    for (size_t i = 0; i < specials.len; i++) ids[n++] = specials.ptr[i].id;
    for (size_t i = 0; i < info.eos.len; i++) ids[n++] = info.eos.ptr[i];
    if (info.bos.is_some) ids[n++] = info.bos.val;
    qsort(ids, n, 4, dw_cmp_u32);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (k == 0 || ids[k - 1] != ids[i]) ids[k++] = ids[i];
    *count = k;
    deepwasm_plugin_tokenizer_tokenizer_info_free(&info);
    deepwasm_plugin_tokenizer_list_special_token_free(&specials);
    return ids;
}

#endif /* the sampler world */

/* ---- tools -------------------------------------------------------------------- */

/* A `tool-spec` with copies of the strings. */
static inline deepwasm_plugin_types_tool_spec_t dw_tool_spec(const char *name, const char *description,
                                                             const char *parameters) {
    deepwasm_plugin_types_tool_spec_t spec = {dw_string(name), dw_string(description), dw_string(parameters)};
    return spec;
}

/* `tool-output::json` taking the buffer's bytes. */
static inline void dw_tool_output_json(deepwasm_plugin_types_tool_output_t *out, dw_buf_t *json) {
    out->tag = DEEPWASM_PLUGIN_TYPES_TOOL_OUTPUT_JSON;
    out->val.json = dw_buf_into_string(json);
}

/* `tool-output::text` taking the buffer's bytes. */
static inline void dw_tool_output_text(deepwasm_plugin_types_tool_output_t *out, dw_buf_t *text) {
    out->tag = DEEPWASM_PLUGIN_TYPES_TOOL_OUTPUT_TEXT;
    out->val.text = dw_buf_into_string(text);
}

#endif /* DEEPWASM_PLUGIN_H */
