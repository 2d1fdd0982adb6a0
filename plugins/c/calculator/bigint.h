/*
 * Signed big integers and exact rationals for the calculator.
 *
 * A `big_t` is a sign and a magnitude of 32-bit limbs, least significant
 * first, without leading zero limbs (zero has no limbs). Every function that
 * returns a `big_t` returns a new value owned by the caller (`big_free`).
 * Schoolbook multiplication and Knuth's long division: the calculator's
 * numbers stop at 100,000 bits, where these take milliseconds.
 */
#ifndef CALCULATOR_BIGINT_H
#define CALCULATOR_BIGINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "deepwasm_plugin.h"

typedef struct {
    uint32_t *d;
    size_t n;
    bool neg;
} big_t;

/* A rational in lowest terms: den > 0. */
typedef struct {
    big_t num;
    big_t den;
} rat_t;

big_t big_from_u64(uint64_t v);
big_t big_copy(const big_t *a);
void big_free(big_t *a);
bool big_is_zero(const big_t *a);
/* Whether |a| = 1. */
bool big_is_unit(const big_t *a);
bool big_is_odd(const big_t *a);
/* Number of bits of |a| (0 for zero). */
uint64_t big_bits(const big_t *a);
/* Compare a and b (signed): -1, 0 or 1. */
int big_cmp(const big_t *a, const big_t *b);
big_t big_add(const big_t *a, const big_t *b);
big_t big_sub(const big_t *a, const big_t *b);
big_t big_mul(const big_t *a, const big_t *b);
/* Truncating division of magnitudes (signs: q as in C, r takes a's sign). */
void big_divmod(const big_t *a, const big_t *b, big_t *q, big_t *r);
/* a^e. */
big_t big_pow(const big_t *a, uint64_t e);
/* 10^e. */
big_t big_pow10(uint64_t e);
/* gcd(|a|, |b|). */
big_t big_gcd(const big_t *a, const big_t *b);
/* The number written by `len` ASCII digits. */
big_t big_from_digits(const char *digits, size_t len);
/* Append a in decimal. */
void big_write(const big_t *a, dw_buf_t *out);
/* |a| as a u64 when it fits. */
bool big_to_u64(const big_t *a, uint64_t *out);
/* Divide |a| in place by the largest power of `p` (2 or 5) that divides it;
 * returns that power's exponent. */
uint64_t big_strip_factor(big_t *a, uint32_t p);

/* n/d in lowest terms (takes both; d != 0). */
rat_t rat_new(big_t n, big_t d);
rat_t rat_int(big_t n);
void rat_free(rat_t *r);
rat_t rat_copy(const rat_t *r);
rat_t rat_add(const rat_t *a, const rat_t *b);
rat_t rat_sub(const rat_t *a, const rat_t *b);
rat_t rat_mul(const rat_t *a, const rat_t *b);
/* a / b, b != 0. */
rat_t rat_div(const rat_t *a, const rat_t *b);
void rat_negate(rat_t *r);
bool rat_is_integer(const rat_t *r);
/* The larger bit count of numerator and denominator. */
uint64_t rat_bits(const rat_t *r);

#endif
