// `r1-format`: the DeepSeek-R1 format reward, in JavaScript.
//
// The same reward as `plugins/rust/r1-format` (see its header for the rule):
// 1.0 when a completion has the `<think>…</think>` shape, 0.0 otherwise,
// never `none`. Config: `{"strict": false}`.

import { Fields, trimEndWs, trimWs } from './deepwasm_plugin.js';

const OPEN = '<think>';
const CLOSE = '</think>';

/** Whether `completion` (to `prompt`) has the R1 format. */
export function wellFormed(prompt, completion, strict) {
  let afterOpen;
  if (completion.startsWith(OPEN)) {
    afterOpen = completion.slice(OPEN.length);
  } else if (trimEndWs(prompt).endsWith(OPEN)) {
    afterOpen = completion;
  } else {
    return false;
  }
  if (afterOpen.includes(OPEN)) return false;
  const close = afterOpen.indexOf(CLOSE);
  if (close < 0) return false;
  if (!strict) return true;
  const answer = afterOpen.slice(close + CLOSE.length);
  return !answer.includes(CLOSE) && trimWs(answer) !== '';
}

export const scorer = {
  score(samples, config) {
    const cfg = Fields.parse('config', config);
    cfg.only('strict');
    const strict = cfg.getBool('strict', false);
    return samples.map((s) => (wellFormed(s.prompt, s.completion, strict) ? 1.0 : 0.0));
  },
};
