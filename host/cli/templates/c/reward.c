/*
 * `{{name}}`: a deepwasm reward plugin (world `reward`), in C.
 *
 * Scores 1.0 when a completion contains the config's `needle`, 0.0
 * otherwise. Config: `{"needle": "</think>"}` (the default needle).
 *
 * The arguments of an exported function belong to the plugin (free them);
 * what it returns must come from malloc (the bindings free it).
 */
#include "deepwasm_plugin.h"

/* Whether `hay[..n]` contains `needle[..m]`. */
static bool contains(const uint8_t *hay, size_t n, const char *needle, size_t m) {
    for (size_t i = 0; i + m <= n; i++)
        if (memcmp(hay + i, needle, m) == 0) return true;
    return false;
}

bool exports_deepwasm_plugin_scorer_score(exports_deepwasm_plugin_scorer_list_sample_t *samples,
                                          deepwasm_string_t *config, deepwasm_list_option_f64_t *ret,
                                          dw_error_t *err) {
    static const char *const known[] = {"needle"};
    dw_fields_t cfg;
    const dw_json_t *needle = NULL;
    /* A bad config is an error value: every sample of the batch gets it. */
    bool ok = dw_fields_parse(&cfg, "config", config, err) && dw_fields_only(&cfg, known, 1, err) &&
              dw_fields_get_string(&cfg, "needle", &needle, err);
    if (ok) {
        const char *text = needle ? needle->str : "</think>";
        size_t len = needle ? needle->len : strlen(text);
        ret->len = samples->len;
        ret->ptr = (deepwasm_option_f64_t *)dw_alloc(samples->len * sizeof *ret->ptr);
        for (size_t i = 0; i < samples->len; i++) {
            const deepwasm_string_t *c = &samples->ptr[i].completion;
            ret->ptr[i].is_some = true;
            ret->ptr[i].val = contains(c->ptr, c->len, text, len) ? 1.0 : 0.0;
        }
    }
    dw_fields_free(&cfg);
    exports_deepwasm_plugin_scorer_list_sample_free(samples);
    deepwasm_string_free(config);
    return ok;
}
