/* Signed big integers and exact rationals; see bigint.h. */
#include "bigint.h"

/* ---- magnitudes ----------------------------------------------------------- */

static big_t alloc_limbs(size_t n) {
    big_t r = {(uint32_t *)dw_zalloc(n * sizeof(uint32_t)), n, false};
    return r;
}

/* Drop leading zero limbs; zero is never negative. */
static void trim(big_t *a) {
    while (a->n && a->d[a->n - 1] == 0) a->n--;
    if (!a->n) a->neg = false;
}

static int mag_cmp(const uint32_t *a, size_t an, const uint32_t *b, size_t bn) {
    if (an != bn) return an < bn ? -1 : 1;
    for (size_t i = an; i-- > 0;)
        if (a[i] != b[i]) return a[i] < b[i] ? -1 : 1;
    return 0;
}

static big_t mag_add(const uint32_t *a, size_t an, const uint32_t *b, size_t bn) {
    if (an < bn) {
        const uint32_t *t = a;
        a = b, b = t;
        size_t tn = an;
        an = bn, bn = tn;
    }
    big_t r = alloc_limbs(an + 1);
    uint64_t carry = 0;
    for (size_t i = 0; i < an; i++) {
        carry += (uint64_t)a[i] + (i < bn ? b[i] : 0);
        r.d[i] = (uint32_t)carry;
        carry >>= 32;
    }
    r.d[an] = (uint32_t)carry;
    trim(&r);
    return r;
}

/* |a| - |b| for |a| >= |b|. */
static big_t mag_sub(const uint32_t *a, size_t an, const uint32_t *b, size_t bn) {
    big_t r = alloc_limbs(an);
    int64_t borrow = 0;
    for (size_t i = 0; i < an; i++) {
        int64_t t = (int64_t)a[i] - (i < bn ? b[i] : 0) - borrow;
        borrow = t < 0;
        r.d[i] = (uint32_t)t;
    }
    trim(&r);
    return r;
}

static big_t mag_mul(const uint32_t *a, size_t an, const uint32_t *b, size_t bn) {
    if (!an || !bn) return alloc_limbs(0);
    big_t r = alloc_limbs(an + bn);
    for (size_t i = 0; i < an; i++) {
        uint64_t carry = 0, ai = a[i];
        if (!ai) continue;
        for (size_t j = 0; j < bn; j++) {
            carry += ai * b[j] + r.d[i + j];
            r.d[i + j] = (uint32_t)carry;
            carry >>= 32;
        }
        r.d[i + bn] = (uint32_t)carry;
    }
    trim(&r);
    return r;
}

/* a[0..n) = a / v in place; returns the remainder. */
static uint32_t mag_div_small(uint32_t *a, size_t n, uint32_t v) {
    uint64_t rem = 0;
    for (size_t i = n; i-- > 0;) {
        uint64_t cur = (rem << 32) | a[i];
        a[i] = (uint32_t)(cur / v);
        rem = cur % v;
    }
    return (uint32_t)rem;
}

static uint32_t mag_mod_small(const uint32_t *a, size_t n, uint32_t v) {
    uint64_t rem = 0;
    for (size_t i = n; i-- > 0;) rem = ((rem << 32) | a[i]) % v;
    return (uint32_t)rem;
}

/* Knuth's algorithm D: q = u / v, r = u % v, for n = vn >= 2 and un >= vn.
 * q has un - vn + 1 limbs and r has vn limbs (callers trim). */
static void mag_divmod_long(const uint32_t *u, size_t un, const uint32_t *v, size_t vn, uint32_t *q,
                            uint32_t *r) {
    const uint64_t base = (uint64_t)1 << 32;
    int s = __builtin_clz(v[vn - 1]);
    uint32_t *vv = (uint32_t *)dw_alloc(vn * sizeof(uint32_t));
    uint32_t *uu = (uint32_t *)dw_alloc((un + 1) * sizeof(uint32_t));
    for (size_t i = vn - 1; i > 0; i--)
        vv[i] = s ? (v[i] << s) | (uint32_t)((uint64_t)v[i - 1] >> (32 - s)) : v[i];
    vv[0] = v[0] << s;
    uu[un] = s ? (uint32_t)((uint64_t)u[un - 1] >> (32 - s)) : 0;
    for (size_t i = un - 1; i > 0; i--)
        uu[i] = s ? (u[i] << s) | (uint32_t)((uint64_t)u[i - 1] >> (32 - s)) : u[i];
    uu[0] = u[0] << s;

    for (size_t j = un - vn + 1; j-- > 0;) {
        uint64_t num = ((uint64_t)uu[j + vn] << 32) | uu[j + vn - 1];
        uint64_t qhat = num / vv[vn - 1];
        uint64_t rhat = num % vv[vn - 1];
        while (qhat >= base || qhat * vv[vn - 2] > ((rhat << 32) | uu[j + vn - 2])) {
            qhat--;
            rhat += vv[vn - 1];
            if (rhat >= base) break;
        }
        /* uu[j..j+vn] -= qhat * vv */
        int64_t borrow = 0;
        uint64_t carry = 0;
        for (size_t i = 0; i < vn; i++) {
            uint64_t p = qhat * vv[i] + carry;
            carry = p >> 32;
            int64_t t = (int64_t)uu[i + j] - (int64_t)(p & 0xffffffffu) - borrow;
            uu[i + j] = (uint32_t)t;
            borrow = t < 0;
        }
        int64_t t = (int64_t)uu[j + vn] - (int64_t)carry - borrow;
        uu[j + vn] = (uint32_t)t;
        if (t < 0) {
            /* qhat was one too large: add vv back. */
            qhat--;
            uint64_t c = 0;
            for (size_t i = 0; i < vn; i++) {
                c += (uint64_t)uu[i + j] + vv[i];
                uu[i + j] = (uint32_t)c;
                c >>= 32;
            }
            uu[j + vn] += (uint32_t)c;
        }
        if (q) q[j] = (uint32_t)qhat;
    }
    if (r) {
        for (size_t i = 0; i < vn; i++)
            r[i] = s ? (uu[i] >> s) | (uint32_t)((uint64_t)uu[i + 1] << (32 - s)) : uu[i];
    }
    free(vv);
    free(uu);
}

/* ---- big integers ------------------------------------------------------------ */

big_t big_from_u64(uint64_t v) {
    big_t r = alloc_limbs(2);
    r.d[0] = (uint32_t)v;
    r.d[1] = (uint32_t)(v >> 32);
    trim(&r);
    return r;
}

big_t big_copy(const big_t *a) {
    big_t r = alloc_limbs(a->n);
    if (a->n) memcpy(r.d, a->d, a->n * sizeof(uint32_t));
    r.neg = a->neg;
    return r;
}

void big_free(big_t *a) {
    free(a->d);
    a->d = NULL;
    a->n = 0;
    a->neg = false;
}

bool big_is_zero(const big_t *a) { return a->n == 0; }

bool big_is_unit(const big_t *a) { return a->n == 1 && a->d[0] == 1; }

bool big_is_odd(const big_t *a) { return a->n && (a->d[0] & 1); }

uint64_t big_bits(const big_t *a) {
    if (!a->n) return 0;
    return (uint64_t)(a->n - 1) * 32 + (uint64_t)(32 - __builtin_clz(a->d[a->n - 1]));
}

int big_cmp(const big_t *a, const big_t *b) {
    if (a->neg != b->neg) return a->neg ? -1 : 1;
    int c = mag_cmp(a->d, a->n, b->d, b->n);
    return a->neg ? -c : c;
}

/* a + (negate_b ? -b : b) */
static big_t add_signed(const big_t *a, const big_t *b, bool negate_b) {
    bool bneg = b->n ? b->neg != negate_b : false;
    big_t r;
    if (a->neg == bneg) {
        r = mag_add(a->d, a->n, b->d, b->n);
        r.neg = a->neg;
    } else if (mag_cmp(a->d, a->n, b->d, b->n) >= 0) {
        r = mag_sub(a->d, a->n, b->d, b->n);
        r.neg = a->neg;
    } else {
        r = mag_sub(b->d, b->n, a->d, a->n);
        r.neg = bneg;
    }
    trim(&r);
    return r;
}

big_t big_add(const big_t *a, const big_t *b) { return add_signed(a, b, false); }

big_t big_sub(const big_t *a, const big_t *b) { return add_signed(a, b, true); }

big_t big_mul(const big_t *a, const big_t *b) {
    big_t r = mag_mul(a->d, a->n, b->d, b->n);
    r.neg = r.n && a->neg != b->neg;
    return r;
}

void big_divmod(const big_t *a, const big_t *b, big_t *q, big_t *r) {
    big_t qq, rr;
    if (mag_cmp(a->d, a->n, b->d, b->n) < 0) {
        qq = alloc_limbs(0);
        rr = big_copy(a);
        rr.neg = false;
    } else if (b->n == 1) {
        qq = big_copy(a);
        qq.neg = false;
        rr = big_from_u64(mag_div_small(qq.d, qq.n, b->d[0]));
    } else {
        qq = alloc_limbs(a->n - b->n + 1);
        rr = alloc_limbs(b->n);
        mag_divmod_long(a->d, a->n, b->d, b->n, qq.d, rr.d);
    }
    trim(&qq);
    trim(&rr);
    qq.neg = qq.n && a->neg != b->neg;
    rr.neg = rr.n && a->neg;
    if (q) *q = qq;
    else big_free(&qq);
    if (r) *r = rr;
    else big_free(&rr);
}

big_t big_pow(const big_t *a, uint64_t e) {
    big_t result = big_from_u64(1);
    big_t base = big_copy(a);
    while (e) {
        if (e & 1) {
            big_t t = big_mul(&result, &base);
            big_free(&result);
            result = t;
        }
        e >>= 1;
        if (e) {
            big_t t = big_mul(&base, &base);
            big_free(&base);
            base = t;
        }
    }
    big_free(&base);
    return result;
}

big_t big_pow10(uint64_t e) {
    big_t ten = big_from_u64(10);
    big_t r = big_pow(&ten, e);
    big_free(&ten);
    return r;
}

/* x = x mod y in place, for magnitudes (y nonzero). */
static void mag_mod_inplace(big_t *x, const big_t *y) {
    if (mag_cmp(x->d, x->n, y->d, y->n) < 0) return;
    if (y->n == 1) {
        uint32_t rem = mag_mod_small(x->d, x->n, y->d[0]);
        x->d[0] = rem;
        x->n = 1;
        trim(x);
        return;
    }
    mag_divmod_long(x->d, x->n, y->d, y->n, NULL, x->d);
    x->n = y->n;
    trim(x);
}

big_t big_gcd(const big_t *a, const big_t *b) {
    big_t x = big_copy(a), y = big_copy(b);
    x.neg = y.neg = false;
    while (y.n) {
        if (x.n <= 2 && y.n <= 2) {
            uint64_t u = 0, v = 0;
            big_to_u64(&x, &u);
            big_to_u64(&y, &v);
            while (v) {
                uint64_t t = u % v;
                u = v;
                v = t;
            }
            big_free(&x);
            big_free(&y);
            return big_from_u64(u);
        }
        mag_mod_inplace(&x, &y);
        big_t t = x;
        x = y;
        y = t;
    }
    big_free(&y);
    return x;
}

big_t big_from_digits(const char *digits, size_t len) {
    big_t r = alloc_limbs(len / 9 + 2);
    size_t used = 0;
    size_t i = 0;
    while (i < len) {
        size_t take = (len - i) % 9 ? (len - i) % 9 : 9;
        uint32_t chunk = 0, scale = 1;
        for (size_t k = 0; k < take; k++, i++) {
            chunk = chunk * 10 + (uint32_t)(digits[i] - '0');
            scale *= 10;
        }
        /* r = r * scale + chunk */
        uint64_t carry = chunk;
        for (size_t k = 0; k < used; k++) {
            carry += (uint64_t)r.d[k] * scale;
            r.d[k] = (uint32_t)carry;
            carry >>= 32;
        }
        if (carry) r.d[used++] = (uint32_t)carry;
    }
    r.n = used;
    trim(&r);
    return r;
}

void big_write(const big_t *a, dw_buf_t *out) {
    if (!a->n) {
        dw_buf_putc(out, '0');
        return;
    }
    big_t t = big_copy(a);
    size_t cap = t.n * 10 / 9 + 2, count = 0;
    uint32_t *chunks = (uint32_t *)dw_alloc(cap * sizeof(uint32_t));
    while (t.n) {
        chunks[count++] = mag_div_small(t.d, t.n, 1000000000u);
        trim(&t);
        t.neg = false;
    }
    if (a->neg) dw_buf_putc(out, '-');
    dw_buf_printf(out, "%u", chunks[count - 1]);
    for (size_t i = count - 1; i-- > 0;) dw_buf_printf(out, "%09u", chunks[i]);
    free(chunks);
    big_free(&t);
}

bool big_to_u64(const big_t *a, uint64_t *out) {
    if (a->n > 2) return false;
    *out = a->n == 0 ? 0 : a->n == 1 ? a->d[0] : ((uint64_t)a->d[1] << 32) | a->d[0];
    return true;
}

uint64_t big_strip_factor(big_t *a, uint32_t p) {
    uint64_t count = 0;
    if (!a->n) return 0;
    if (p == 2) {
        size_t limbs = 0;
        while (a->d[limbs] == 0) limbs++;
        int bits = __builtin_ctz(a->d[limbs]);
        count = (uint64_t)limbs * 32 + (uint64_t)bits;
        size_t n = a->n - limbs;
        for (size_t i = 0; i < n; i++) {
            uint32_t lo = a->d[i + limbs] >> bits;
            uint32_t hi = bits && i + limbs + 1 < a->n ? a->d[i + limbs + 1] << (32 - bits) : 0;
            a->d[i] = lo | hi;
        }
        a->n = n;
        trim(a);
        return count;
    }
    /* Divide by p^k in the largest chunks that fit a limb first. */
    uint32_t chunk = p, k = 1;
    while ((uint64_t)chunk * p <= 0xffffffffu) chunk *= p, k++;
    for (;;) {
        while (mag_mod_small(a->d, a->n, chunk) == 0) {
            mag_div_small(a->d, a->n, chunk);
            trim(a);
            count += k;
        }
        if (chunk == p) return count;
        chunk /= p, k--;
    }
}

/* ---- rationals -------------------------------------------------------------------- */

rat_t rat_new(big_t n, big_t d) {
    if (d.neg) {
        d.neg = false;
        n.neg = n.n ? !n.neg : false;
    }
    rat_t r = {n, d};
    if (big_is_unit(&d)) return r;
    if (!n.n) {
        big_free(&r.den);
        r.den = big_from_u64(1);
        return r;
    }
    big_t g = big_gcd(&n, &d);
    if (!big_is_unit(&g)) {
        big_t nn, dd;
        big_divmod(&n, &g, &nn, NULL);
        big_divmod(&d, &g, &dd, NULL);
        big_free(&r.num);
        big_free(&r.den);
        r.num = nn;
        r.den = dd;
    }
    big_free(&g);
    return r;
}

rat_t rat_int(big_t n) {
    rat_t r = {n, big_from_u64(1)};
    return r;
}

void rat_free(rat_t *r) {
    big_free(&r->num);
    big_free(&r->den);
}

rat_t rat_copy(const rat_t *r) {
    rat_t c = {big_copy(&r->num), big_copy(&r->den)};
    return c;
}

static rat_t add_or_sub(const rat_t *a, const rat_t *b, bool sub) {
    if (rat_is_integer(a) && rat_is_integer(b))
        return rat_int(sub ? big_sub(&a->num, &b->num) : big_add(&a->num, &b->num));
    big_t x = big_mul(&a->num, &b->den), y = big_mul(&b->num, &a->den);
    big_t n = sub ? big_sub(&x, &y) : big_add(&x, &y);
    big_free(&x);
    big_free(&y);
    return rat_new(n, big_mul(&a->den, &b->den));
}

rat_t rat_add(const rat_t *a, const rat_t *b) { return add_or_sub(a, b, false); }

rat_t rat_sub(const rat_t *a, const rat_t *b) { return add_or_sub(a, b, true); }

rat_t rat_mul(const rat_t *a, const rat_t *b) {
    if (rat_is_integer(a) && rat_is_integer(b)) return rat_int(big_mul(&a->num, &b->num));
    return rat_new(big_mul(&a->num, &b->num), big_mul(&a->den, &b->den));
}

rat_t rat_div(const rat_t *a, const rat_t *b) {
    return rat_new(big_mul(&a->num, &b->den), big_mul(&a->den, &b->num));
}

void rat_negate(rat_t *r) {
    if (r->num.n) r->num.neg = !r->num.neg;
}

bool rat_is_integer(const rat_t *r) { return big_is_unit(&r->den); }

uint64_t rat_bits(const rat_t *r) {
    uint64_t a = big_bits(&r->num), b = big_bits(&r->den);
    return a > b ? a : b;
}
