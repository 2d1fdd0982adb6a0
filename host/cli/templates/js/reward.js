// `{{name}}`: a deepwasm reward plugin (world `reward`), in JavaScript.
//
// Scores 1.0 when a completion contains the config's `needle`, 0.0
// otherwise. Config: `{"needle": "</think>"}` (the default needle).

import { Fields } from './deepwasm_plugin.js';

export const scorer = {
  score(samples, config) {
    // A bad config throws an error value: every sample of the batch gets it.
    const cfg = Fields.parse('config', config);
    cfg.only('needle');
    const needle = cfg.getString('needle', '</think>');
    return samples.map((s) => (s.completion.includes(needle) ? 1.0 : 0.0));
  },
};
