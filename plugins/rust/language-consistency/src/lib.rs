//! `language-consistency`: DeepSeek-R1's language consistency reward (§2.3.2
//! of the R1 report): the share of the reasoning written in the language of
//! the prompt, which discourages a chain of thought that mixes languages.
//!
//! Config: none (`{}`).
//!
//! Languages are told apart by writing system, which needs no model and is
//! what mixing shows up as: each word (a run of letters) is given the script
//! of its letters — Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari,
//! Thai, Hangul, Japanese kana, or Han (CJK ideographs, where every character
//! counts as a word, as those languages write no spaces). The prompt's
//! language is its most frequent script. The reasoning is the text between
//! `<think>` and `</think>` (or, when the prompt opened the reasoning, the
//! completion up to `</think>`; without tags, the whole completion). The
//! score is the fraction of the reasoning's words in the prompt's script, in
//! [0, 1]; `none` when the prompt or the reasoning has no words.

use deepwasm_sdk::config::Fields;
use deepwasm_sdk::reward::{Guest, Sample};
use deepwasm_sdk::types::Error;

/// A writing system.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Script {
    Latin,
    Cyrillic,
    Greek,
    Arabic,
    Hebrew,
    Devanagari,
    Thai,
    Hangul,
    Kana,
    Han,
}

/// The script of a letter, if it belongs to one this reward knows.
pub fn script(c: char) -> Option<Script> {
    let u = c as u32;
    Some(match u {
        0x41..=0x5A | 0x61..=0x7A | 0xC0..=0x24F | 0x1E00..=0x1EFF => Script::Latin,
        0x370..=0x3FF | 0x1F00..=0x1FFF => Script::Greek,
        0x400..=0x52F => Script::Cyrillic,
        0x590..=0x5FF => Script::Hebrew,
        0x600..=0x6FF | 0x750..=0x77F => Script::Arabic,
        0x900..=0x97F => Script::Devanagari,
        0xE00..=0xE7F => Script::Thai,
        0x1100..=0x11FF | 0xAC00..=0xD7AF => Script::Hangul,
        0x3040..=0x30FF => Script::Kana,
        0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF => Script::Han,
        _ => return None,
    })
}

/// The scripts of the words of `text`, one per word (one per character for
/// Han, which has no spaces between words).
pub fn word_scripts(text: &str) -> Vec<Script> {
    let mut out = Vec::new();
    let mut current: Option<Script> = None;
    for c in text.chars() {
        match script(c) {
            Some(Script::Han) => {
                out.push(Script::Han);
                current = None;
            }
            Some(s) if current == Some(s) => {}
            Some(s) => {
                out.push(s);
                current = Some(s);
            }
            None => current = None,
        }
    }
    out
}

/// The most frequent script of `text` (ties to the first seen).
pub fn dominant(text: &str) -> Option<Script> {
    let words = word_scripts(text);
    let mut counts: Vec<(Script, usize)> = Vec::new();
    for s in words {
        match counts.iter_mut().find(|(t, _)| *t == s) {
            Some((_, n)) => *n += 1,
            None => counts.push((s, 1)),
        }
    }
    let max = counts.iter().map(|&(_, n)| n).max()?;
    counts.into_iter().find(|&(_, n)| n == max).map(|(s, _)| s)
}

/// The reasoning part of a completion.
pub fn reasoning<'a>(prompt: &str, completion: &'a str) -> &'a str {
    let opened_by_prompt = prompt.trim_end().ends_with("<think>");
    let start = match completion.find("<think>") {
        Some(i) => i + "<think>".len(),
        None if opened_by_prompt => 0,
        None => return completion,
    };
    let rest = &completion[start..];
    match rest.find("</think>") {
        Some(end) => &rest[..end],
        None => rest,
    }
}

/// The score of one sample.
pub fn consistency(prompt: &str, completion: &str) -> Option<f64> {
    let target = dominant(prompt)?;
    let words = word_scripts(reasoning(prompt, completion));
    if words.is_empty() {
        return None;
    }
    Some(words.iter().filter(|&&s| s == target).count() as f64 / words.len() as f64)
}

struct LanguageConsistency;

impl Guest for LanguageConsistency {
    fn score(samples: Vec<Sample>, config: String) -> Result<Vec<Option<f64>>, Error> {
        Fields::parse("config", &config)?.only(&[])?;
        Ok(samples
            .iter()
            .map(|s| consistency(&s.prompt, &s.completion))
            .collect())
    }
}

deepwasm_sdk::export_reward!(LanguageConsistency);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_language_scores_one() {
        assert_eq!(
            consistency("What is 2+2?", "<think>two plus two is four</think>4"),
            Some(1.0)
        );
        assert_eq!(
            consistency("二加二等于多少？", "<think>二加二等于四</think>四"),
            Some(1.0)
        );
    }

    #[test]
    fn mixing_lowers_the_score() {
        // Four English words and two Han characters.
        let s = consistency(
            "What is two plus two?",
            "<think>two plus two 等于 four</think>",
        )
        .unwrap();
        assert!((s - 4.0 / 6.0).abs() < 1e-12, "{s}");
        let s = consistency("Сколько будет два плюс два?", "<think>два plus два</think>").unwrap();
        assert!((s - 2.0 / 3.0).abs() < 1e-12, "{s}");
    }

    #[test]
    fn the_reasoning_may_be_opened_by_the_prompt() {
        let p = "<｜User｜>Hello there<｜Assistant｜><think>\n";
        assert_eq!(reasoning(p, "just thinking</think>answer"), "just thinking");
        assert_eq!(consistency(p, "just thinking</think>答案"), Some(1.0));
    }

    #[test]
    fn nothing_to_judge_is_none() {
        assert_eq!(consistency("123 + 4", "<think>english</think>"), None);
        assert_eq!(consistency("hello", "<think>42 + 1</think>"), None);
    }
}
