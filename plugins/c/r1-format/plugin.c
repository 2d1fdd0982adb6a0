/*
 * `r1-format`: the DeepSeek-R1 format reward, in C.
 *
 * The same reward as `plugins/rust/r1-format` (see its header for the rule):
 * 1.0 when a completion has the `<think>…</think>` shape, 0.0 otherwise,
 * never `none`. Config: `{"strict": false}`.
 */
#include "deepwasm_plugin.h"

#define OPEN "<think>"
#define CLOSE "</think>"
#define OPEN_LEN (sizeof OPEN - 1)
#define CLOSE_LEN (sizeof CLOSE - 1)

/* Whether `completion` (to `prompt`) has the R1 format. */
static bool well_formed(const deepwasm_string_t *prompt, const deepwasm_string_t *completion, bool strict) {
    const uint8_t *after = completion->ptr;
    size_t n = completion->len;
    size_t prompt_len = dw_trim_end(prompt->ptr, prompt->len);
    if (n >= OPEN_LEN && memcmp(after, OPEN, OPEN_LEN) == 0) {
        after += OPEN_LEN;
        n -= OPEN_LEN;
    } else if (!(prompt_len >= OPEN_LEN && memcmp(prompt->ptr + prompt_len - OPEN_LEN, OPEN, OPEN_LEN) == 0)) {
        return false;
    }
    if (dw_find(after, n, OPEN) >= 0) return false;
    long close = dw_find(after, n, CLOSE);
    if (close < 0) return false;
    if (!strict) return true;
    const uint8_t *answer = after + close + CLOSE_LEN;
    size_t answer_len = n - (size_t)close - CLOSE_LEN;
    return dw_find(answer, answer_len, CLOSE) < 0 && !dw_is_blank(answer, answer_len);
}

bool exports_deepwasm_plugin_scorer_score(exports_deepwasm_plugin_scorer_list_sample_t *samples,
                                          deepwasm_string_t *config, deepwasm_list_option_f64_t *ret,
                                          dw_error_t *err) {
    static const char *const known[] = {"strict"};
    dw_fields_t cfg;
    bool strict = false;
    bool ok = dw_fields_parse(&cfg, "config", config, err) &&
              dw_fields_only(&cfg, known, 1, err) &&
              dw_fields_get_bool(&cfg, "strict", false, &strict, err);
    dw_fields_free(&cfg);
    if (ok) {
        ret->len = samples->len;
        ret->ptr = (deepwasm_option_f64_t *)dw_alloc(samples->len * sizeof *ret->ptr);
        for (size_t i = 0; i < samples->len; i++) {
            const exports_deepwasm_plugin_scorer_sample_t *s = &samples->ptr[i];
            ret->ptr[i].is_some = true;
            ret->ptr[i].val = well_formed(&s->prompt, &s->completion, strict) ? 1.0 : 0.0;
        }
    }
    exports_deepwasm_plugin_scorer_list_sample_free(samples);
    deepwasm_string_free(config);
    return ok;
}
