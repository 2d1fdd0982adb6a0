/*
 * `calculator`: exact rational arithmetic as a tool, in C.
 *
 * The same tool as `plugins/rust/calculator` (see its header for the grammar,
 * the output and the limits): `calculate` with `{"expression": "..."}`
 * answers `{"expression", "result", "decimal"}` as JSON, with the same error
 * kinds and messages. Numbers are rationals of big integers (bigint.c) in
 * lowest terms; positions count Unicode scalar values, as in Rust.
 */
#include "bigint.h"
#include "deepwasm_plugin.h"


#define MAX_BITS 100000
#define MAX_CHARS 10000
#define MAX_DEPTH 100
#define SIGNIFICANT 12

static const char SCHEMA[] =
    "{\"type\":\"object\",\"properties\":{\"expression\":{\"type\":\"string\"}},"
    "\"required\":[\"expression\"],\"additionalProperties\":false}";
static const char DESCRIPTION[] =
    "Evaluate an arithmetic expression exactly with rational numbers: + - * /, "
    "^ with an integer exponent, parentheses and decimal numbers. Returns the exact "
    "result (an integer or a fraction) and its decimal form.";

/* ---- the parser ------------------------------------------------------------
 *
 * Each step returns a value, or NULL after writing the error message into
 * `p->error`. Every value made during a call stays on `p->live` until the
 * call ends, so that a failure anywhere frees everything. */

typedef struct {
    const uint32_t *chars;
    size_t len, pos, depth;
    dw_buf_t error;
    rat_t **live;
    size_t nlive, cap;
} parser_t;

#define TRY(x)                                                                                    \
    do {                                                                                          \
        if (!(x)) return NULL;                                                                    \
    } while (0)

__attribute__((format(printf, 2, 3))) static rat_t *fail(parser_t *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    dw_buf_vprintf(&p->error, fmt, ap);
    va_end(ap);
    return NULL;
}

static rat_t *unexpected(parser_t *p, const char *expected) {
    if (p->pos >= p->len) return fail(p, "expected %s at position %zu, found the end", expected, p->pos);
    dw_buf_t c = {0};
    dw_buf_put_utf8(&c, p->chars[p->pos]);
    fail(p, "expected %s at position %zu, found '%s'", expected, p->pos, c.ptr);
    dw_buf_free(&c);
    return NULL;
}

static rat_t *keep(parser_t *p, rat_t v) {
    if (p->nlive == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 64;
        p->live = (rat_t **)dw_realloc(p->live, p->cap * sizeof *p->live);
    }
    rat_t *slot = (rat_t *)dw_alloc(sizeof *slot);
    *slot = v;
    p->live[p->nlive++] = slot;
    return slot;
}

static void release_all(parser_t *p) {
    for (size_t i = 0; i < p->nlive; i++) {
        rat_free(p->live[i]);
        free(p->live[i]);
    }
    free(p->live);
    p->live = NULL;
    p->nlive = p->cap = 0;
}

/* `value` kept, or NULL when it is larger than MAX_BITS allows. */
static rat_t *checked(parser_t *p, rat_t value) {
    uint64_t bits = rat_bits(&value);
    if (bits > MAX_BITS) {
        rat_free(&value);
        return fail(p, "a value would have %llu bits; the limit is %d", (unsigned long long)bits, MAX_BITS);
    }
    return keep(p, value);
}

static void skip_ws(parser_t *p) {
    while (p->pos < p->len && dw_is_whitespace(p->chars[p->pos])) p->pos++;
}

/* Skip whitespace and look at the next character (0 at the end). */
static uint32_t peek(parser_t *p) {
    skip_ws(p);
    return p->pos < p->len ? p->chars[p->pos] : 0;
}

static uint32_t at(const parser_t *p, size_t i) { return i < p->len ? p->chars[i] : 0; }

static bool enter(parser_t *p) {
    if (++p->depth > MAX_DEPTH) {
        fail(p, "nesting deeper than %d at position %zu", MAX_DEPTH, p->pos);
        return false;
    }
    return true;
}

static bool is_digit(uint32_t c) { return c >= '0' && c <= '9'; }

static rat_t *expr(parser_t *p);
static rat_t *unary(parser_t *p);

static rat_t *power_of(parser_t *p, const rat_t *base, const rat_t *exponent, size_t at_pos) {
    if (!rat_is_integer(exponent)) return fail(p, "the exponent at position %zu is not an integer", at_pos);
    const big_t *e = &exponent->num;
    if (big_is_zero(&base->num)) {
        if (e->neg) return fail(p, "division by zero (0 to a negative power) at position %zu", at_pos);
        return keep(p, rat_int(big_from_u64(big_is_zero(e) ? 1 : 0)));
    }
    if (big_is_unit(&base->num) && rat_is_integer(base)) {
        big_t one = big_from_u64(1);
        one.neg = base->num.neg && big_is_odd(e);
        return keep(p, rat_int(one));
    }
    uint64_t size = rat_bits(base);
    size = size > 1 ? size - 1 : 1;
    uint64_t n;
    if (!big_to_u64(e, &n) || n > MAX_BITS / size)
        return fail(p, "the power at position %zu is too large: the result would pass %d bits", at_pos,
                    MAX_BITS);
    /* numerator^n and denominator^n are coprime already. */
    big_t num = big_pow(&base->num, n), den = big_pow(&base->den, n);
    rat_t r;
    if (e->neg) {
        bool neg = num.neg;
        num.neg = false;
        den.neg = neg;
        r.num = den;
        r.den = num;
    } else {
        r.num = num;
        r.den = den;
    }
    return checked(p, r);
}

/* number := digits ('.' digits?)? | '.' digits */
static rat_t *number(parser_t *p) {
    size_t start = p->pos;
    dw_buf_t digits = {0};
    while (is_digit(at(p, p->pos))) dw_buf_putc(&digits, (char)p->chars[p->pos++]);
    size_t whole = digits.len, frac = 0;
    if (at(p, p->pos) == '.') {
        p->pos++;
        while (is_digit(at(p, p->pos))) dw_buf_putc(&digits, (char)p->chars[p->pos++]);
        frac = digits.len - whole;
    }
    if (digits.len == 0) {
        p->pos = start;
        return unexpected(p, "a number");
    }
    big_t n = big_from_digits(digits.ptr, digits.len);
    dw_buf_free(&digits);
    return checked(p, rat_new(n, big_pow10(frac)));
}

/* primary := number | '(' expr ')' */
static rat_t *primary(parser_t *p) {
    uint32_t c = peek(p);
    if (c == '(') {
        p->pos++;
        if (!enter(p)) return NULL;
        rat_t *v;
        TRY(v = expr(p));
        p->depth--;
        if (peek(p) != ')') return unexpected(p, "')'");
        p->pos++;
        return v;
    }
    if (is_digit(c) || c == '.') return number(p);
    return unexpected(p, "a number or '('");
}

/* power := primary (('^' | '**') unary)? */
static rat_t *power(parser_t *p) {
    rat_t *base;
    TRY(base = primary(p));
    uint32_t c = peek(p);
    size_t at_pos = p->pos;
    if (c == '^') {
        p->pos += 1;
    } else if (c == '*' && at(p, p->pos + 1) == '*') {
        p->pos += 2;
    } else {
        return base;
    }
    if (!enter(p)) return NULL;
    rat_t *exponent;
    TRY(exponent = unary(p));
    p->depth--;
    return power_of(p, base, exponent, at_pos);
}

/* unary := ('+' | '-') unary | power */
static rat_t *unary(parser_t *p) {
    uint32_t op = peek(p);
    if (op == '+' || op == '-') {
        p->pos++;
        if (!enter(p)) return NULL;
        rat_t *v;
        TRY(v = unary(p));
        p->depth--;
        if (op == '+') return v;
        rat_t *r = keep(p, rat_copy(v));
        rat_negate(r);
        return r;
    }
    return power(p);
}

/* term := unary (('*' | '/') unary)* */
static rat_t *term(parser_t *p) {
    rat_t *acc, *rhs;
    TRY(acc = unary(p));
    for (;;) {
        uint32_t c = peek(p);
        if (c == '*' && at(p, p->pos + 1) != '*') {
            p->pos++;
            TRY(rhs = unary(p));
            TRY(acc = checked(p, rat_mul(acc, rhs)));
        } else if (c == '/') {
            size_t at_pos = p->pos;
            p->pos++;
            TRY(rhs = unary(p));
            if (big_is_zero(&rhs->num)) return fail(p, "division by zero at position %zu", at_pos);
            TRY(acc = checked(p, rat_div(acc, rhs)));
        } else {
            return acc;
        }
    }
}

/* expr := term (('+' | '-') term)* */
static rat_t *expr(parser_t *p) {
    rat_t *acc, *rhs;
    TRY(acc = term(p));
    for (;;) {
        uint32_t op = peek(p);
        if (op != '+' && op != '-') return acc;
        p->pos++;
        TRY(rhs = term(p));
        TRY(acc = checked(p, op == '+' ? rat_add(acc, rhs) : rat_sub(acc, rhs)));
    }
}

/* ---- output ----------------------------------------------------------------- */

static void write_exact(const rat_t *v, dw_buf_t *out) {
    big_write(&v->num, out);
    if (!rat_is_integer(v)) {
        dw_buf_putc(out, '/');
        big_write(&v->den, out);
    }
}

/* Put a decimal point `places` digits from the right of `digits`, padding
 * with zeros on the left so that at least one digit is before it. */
static void with_point(const char *digits, size_t len, size_t places, dw_buf_t *out) {
    if (places == 0) {
        dw_buf_push(out, digits, len);
        return;
    }
    size_t pad = len <= places ? places + 1 - len : 0;
    size_t total = pad + len, int_len = total - places;
    for (size_t k = 0; k < total; k++) {
        if (k == int_len) dw_buf_putc(out, '.');
        dw_buf_putc(out, k < pad ? '0' : digits[k - pad]);
    }
}

/* Drop trailing zeros after a decimal point, and the point if nothing is left. */
static void trim_zeros(dw_buf_t *s, size_t from) {
    if (!memchr(s->ptr + from, '.', s->len - from)) return;
    while (s->len > from && s->ptr[s->len - 1] == '0') s->len--;
    if (s->len > from && s->ptr[s->len - 1] == '.') s->len--;
    s->ptr[s->len] = 0;
}

/* v >= 10^e, for v > 0. */
static bool at_least(const rat_t *v, int64_t e) {
    big_t power = big_pow10((uint64_t)(e < 0 ? -e : e));
    big_t lhs, rhs;
    if (e >= 0) {
        lhs = big_copy(&v->num);
        rhs = big_mul(&v->den, &power);
    } else {
        lhs = big_mul(&v->num, &power);
        rhs = big_copy(&v->den);
    }
    bool ok = big_cmp(&lhs, &rhs) >= 0;
    big_free(&power);
    big_free(&lhs);
    big_free(&rhs);
    return ok;
}

/* floor(log10(v)) for v > 0: an estimate from the bit lengths, then corrected. */
static int64_t floor_log10(const rat_t *v) {
    int64_t diff = (int64_t)big_bits(&v->num) - (int64_t)big_bits(&v->den);
    int64_t e = diff * 30103;
    e = e >= 0 ? e / 100000 : -((-e + 99999) / 100000);
    while (!at_least(v, e)) e--;
    while (at_least(v, e + 1)) e++;
    return e;
}

static void write_decimal(const rat_t *value, dw_buf_t *out) {
    bool negative = value->num.neg;
    rat_t v = rat_copy(value);
    v.num.neg = false;
    big_t d = big_copy(&v.den);
    uint64_t twos = big_strip_factor(&d, 2), fives = big_strip_factor(&d, 5);
    bool terminates = big_is_unit(&d);
    big_free(&d);
    if (terminates) {
        uint64_t places = twos > fives ? twos : fives;
        big_t scale = big_pow10(places), scaled, q;
        scaled = big_mul(&v.num, &scale);
        big_divmod(&scaled, &v.den, &q, NULL);
        dw_buf_t digits = {0};
        big_write(&q, &digits);
        if (negative) dw_buf_putc(out, '-');
        with_point(digits.ptr, digits.len, (size_t)places, out);
        dw_buf_free(&digits);
        big_free(&scale);
        big_free(&scaled);
        big_free(&q);
        rat_free(&v);
        return;
    }
    int64_t e = floor_log10(&v);
    int64_t shift = SIGNIFICANT - 1 - e;
    big_t power = big_pow10((uint64_t)(shift < 0 ? -shift : shift));
    big_t num = shift >= 0 ? big_mul(&v.num, &power) : big_copy(&v.num);
    big_t den = shift >= 0 ? big_copy(&v.den) : big_mul(&v.den, &power);
    /* Round half away from zero (the value is positive). */
    big_t q, r;
    big_divmod(&num, &den, &q, &r);
    big_t twice = big_add(&r, &r);
    if (big_cmp(&twice, &den) >= 0) {
        big_t one = big_from_u64(1), q1 = big_add(&q, &one);
        big_free(&q);
        big_free(&one);
        q = q1;
    }
    dw_buf_t digits = {0};
    big_write(&q, &digits);
    if (digits.len > SIGNIFICANT) {
        digits.len = SIGNIFICANT; /* rounding carried into a new digit */
        e++;
    }
    dw_buf_putc(out, '~');
    if (negative) dw_buf_putc(out, '-');
    size_t from = out->len;
    if (e >= -6 && e < 12) {
        with_point(digits.ptr, digits.len, (size_t)(SIGNIFICANT - 1 - e), out);
        trim_zeros(out, from);
    } else {
        with_point(digits.ptr, digits.len, SIGNIFICANT - 1, out);
        trim_zeros(out, from);
        dw_buf_printf(out, "e%lld", (long long)e);
    }
    dw_buf_free(&digits);
    big_free(&power);
    big_free(&num);
    big_free(&den);
    big_free(&q);
    big_free(&r);
    big_free(&twice);
    rat_free(&v);
}

/* Evaluate the expression and write the JSON answer. */
static bool calculate(const dw_json_t *expression, deepwasm_plugin_types_tool_output_t *ret, dw_error_t *err) {
    size_t count;
    uint32_t *chars = dw_utf8_decode((const uint8_t *)expression->str, expression->len, &count);
    if (count > MAX_CHARS) {
        free(chars);
        return dw_invalid_input(err, "the expression has %zu characters; the limit is %d", count, MAX_CHARS);
    }
    parser_t p;
    memset(&p, 0, sizeof p);
    p.chars = chars;
    p.len = count;
    rat_t *value = expr(&p);
    if (value) {
        skip_ws(&p);
        if (p.pos < p.len) value = unexpected(&p, "an operator or the end of the expression");
    }
    bool ok = value != NULL;
    if (ok) {
        dw_buf_t json = {0};
        dw_buf_puts(&json, "{\"expression\":");
        dw_buf_json_string(&json, (const uint8_t *)expression->str, expression->len);
        dw_buf_puts(&json, ",\"result\":\"");
        write_exact(value, &json);
        dw_buf_puts(&json, "\",\"decimal\":\"");
        write_decimal(value, &json);
        dw_buf_puts(&json, "\"}");
        dw_tool_output_json(ret, &json);
    } else {
        dw_invalid_input(err, "%s", p.error.ptr);
    }
    dw_buf_free(&p.error);
    release_all(&p);
    free(chars);
    return ok;
}

/* ---- the tool ------------------------------------------------------------------- */

void exports_deepwasm_plugin_tool_provider_describe(exports_deepwasm_plugin_tool_provider_list_tool_spec_t *ret) {
    ret->len = 1;
    ret->ptr = (deepwasm_plugin_types_tool_spec_t *)dw_alloc(sizeof *ret->ptr);
    ret->ptr[0] = dw_tool_spec("calculate", DESCRIPTION, SCHEMA);
}

bool exports_deepwasm_plugin_tool_provider_call(deepwasm_string_t *name, deepwasm_string_t *arguments,
                                                deepwasm_plugin_types_tool_output_t *ret, dw_error_t *err) {
    bool ok;
    if (!dw_string_eq(name, "calculate")) {
        dw_buf_t quoted = {0};
        dw_buf_json_string(&quoted, name->ptr, name->len);
        ok = dw_not_found(err, "no tool named %s; this plugin has only \"calculate\"", quoted.ptr);
        dw_buf_free(&quoted);
    } else {
        static const char *const known[] = {"expression"};
        dw_fields_t args;
        const dw_json_t *expression = NULL;
        ok = dw_fields_parse(&args, "arguments", arguments, err) && dw_fields_only(&args, known, 1, err) &&
             dw_fields_require_string(&args, "expression", &expression, err) && calculate(expression, ret, err);
        dw_fields_free(&args);
    }
    deepwasm_string_free(name);
    deepwasm_string_free(arguments);
    return ok;
}
