// `{{name}}`: a deepwasm sampler plugin (world `sampler`), in JavaScript.
//
// Picks the most likely token at every step (greedy decoding) and ends the
// sequence after `max_steps` tokens when the config sets it. Config:
// `{"max_steps": 64}` (default: no limit).

import { Fields } from './deepwasm_plugin.js';

/** One generated sequence. */
class Sequence {
  constructor(maxSteps) {
    this.maxSteps = maxSteps;
  }

  static open(config, prompt, params) {
    const cfg = Fields.parse('config', config);
    cfg.only('max_steps');
    return new Sequence(cfg.getInt('max_steps', undefined));
  }

  /** Runs while the model computes the step's logits: decide here what needs no logits. */
  prepare(step, newTokens) {
    if (this.maxSteps !== undefined && step >= this.maxSteps) {
      return { tag: 'decided', val: { tag: 'stop' } };
    }
    return { tag: 'need-logits' };
  }

  /** The logits stay in the host; ask for what you need. */
  decide(step, logits) {
    return { tag: 'pick', val: logits.argmax().token };
  }
}

export const controller = {
  /** Called once per instance before any sequence: build indexes here. */
  setup() {},
  Sequence,
};
