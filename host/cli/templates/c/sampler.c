/*
 * `{{name}}`: a deepwasm sampler plugin (world `sampler`), in C.
 *
 * Picks the most likely token at every step (greedy decoding) and ends the
 * sequence after `max_steps` tokens when the config sets it. Config:
 * `{"max_steps": 64}` (default: no limit).
 *
 * The arguments of an exported function belong to the plugin (free them);
 * what it returns must come from malloc (the bindings free it).
 */
#include "deepwasm_plugin.h"

/* One generated sequence. */
struct exports_deepwasm_plugin_controller_sequence_t {
    bool limited;
    uint32_t max_steps;
};

/* Called once per instance before any sequence: build indexes here. */
bool exports_deepwasm_plugin_controller_setup(dw_error_t *err) { return true; }

bool exports_deepwasm_plugin_controller_static_sequence_open(
    deepwasm_string_t *config, exports_deepwasm_plugin_controller_list_token_id_t *prompt,
    exports_deepwasm_plugin_controller_sampling_params_t *params,
    exports_deepwasm_plugin_controller_own_sequence_t *ret, dw_error_t *err) {
    static const char *const known[] = {"max_steps"};
    dw_fields_t cfg;
    uint32_t max_steps = 0;
    bool ok = dw_fields_parse(&cfg, "config", config, err) && dw_fields_only(&cfg, known, 1, err) &&
              dw_fields_get_u32(&cfg, "max_steps", 0, &max_steps, err);
    bool limited = ok && dw_fields_raw(&cfg, "max_steps") != NULL;
    dw_fields_free(&cfg);
    deepwasm_string_free(config);
    exports_deepwasm_plugin_controller_list_token_id_free(prompt);
    if (!ok) return false;
    exports_deepwasm_plugin_controller_sequence_t *seq = dw_zalloc(sizeof *seq);
    seq->limited = limited;
    seq->max_steps = max_steps;
    *ret = exports_deepwasm_plugin_controller_sequence_new(seq);
    return true;
}

/* Runs while the model computes the step's logits: decide here what needs no logits. */
bool exports_deepwasm_plugin_controller_method_sequence_prepare(
    exports_deepwasm_plugin_controller_borrow_sequence_t self, uint32_t step,
    exports_deepwasm_plugin_controller_list_token_id_t *new_tokens, dw_prepared_t *ret, dw_error_t *err) {
    exports_deepwasm_plugin_controller_list_token_id_free(new_tokens);
    memset(ret, 0, sizeof *ret);
    if (self->limited && step >= self->max_steps) {
        ret->tag = EXPORTS_DEEPWASM_PLUGIN_CONTROLLER_PREPARED_DECIDED;
        ret->val.decided.tag = EXPORTS_DEEPWASM_PLUGIN_CONTROLLER_DECISION_STOP;
    } else {
        ret->tag = EXPORTS_DEEPWASM_PLUGIN_CONTROLLER_PREPARED_NEED_LOGITS;
    }
    return true;
}

/* The logits stay in the host; ask for what you need. */
bool exports_deepwasm_plugin_controller_method_sequence_decide(
    exports_deepwasm_plugin_controller_borrow_sequence_t self, uint32_t step,
    exports_deepwasm_plugin_controller_borrow_logits_t logits, dw_decision_t *ret, dw_error_t *err) {
    deepwasm_plugin_logits_scored_token_t best;
    deepwasm_plugin_logits_method_logits_argmax(logits, &best);
    /* A borrowed handle must be given back before the call returns. */
    deepwasm_plugin_logits_logits_drop_borrow(logits);
    memset(ret, 0, sizeof *ret);
    ret->tag = EXPORTS_DEEPWASM_PLUGIN_CONTROLLER_DECISION_PICK;
    ret->val.pick = best.token;
    return true;
}

void exports_deepwasm_plugin_controller_sequence_destructor(exports_deepwasm_plugin_controller_sequence_t *rep) {
    free(rep);
}
