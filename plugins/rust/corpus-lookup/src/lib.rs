//! `corpus-lookup`: a tool plugin that searches a small encyclopedia bundled
//! in the plugin.
//!
//! The corpus is `src/corpus.txt`, compiled in with `include_str!`: 30
//! short factual entries (capitals, the planets, the Moon and the Sun,
//! chemical elements, inventions and discoveries), each a line `# <title>`
//! followed by a one-paragraph text, entries separated by blank lines.
//!
//! Two tools:
//!
//! - `search`, arguments `{"query": string, "limit"?: integer}`: ranks the
//!   entries by BM25 (`k1 = 1.2`, `b = 0.75`, idf `ln(1 + (N - df + 0.5) /
//!   (df + 0.5))`) and returns `tool-output::json`, a list of at most `limit`
//!   hits (default 3; `limit` below 1 is `invalid-input`, above 10 counts as
//!   10), best first, ties in corpus order, only entries with a positive
//!   score (so possibly `[]`). For `{"query": "capital of France", "limit": 1}`:
//!
//!   ```json
//!   [{"title":"Paris","snippet":"Paris is the capital and largest city of France.","score":4.336}]
//!   ```
//!
//!   `score` is rounded to 3 decimals. `snippet` is the entry's sentence
//!   that contains the most distinct query terms (the first such; the first
//!   sentence when only the title matched), cut at a word boundary with `…`
//!   past 240 characters.
//! - `get`, arguments `{"title": string}`: the entry with that title,
//!   `tool-output::json` `{"title": ..., "text": ...}`. Titles compare after
//!   folding case, common Latin accents and whitespace, and a leading `the`
//!   is optional (`moon` finds `The Moon`, `brasilia` finds `Brasília`). An
//!   unknown title is `not-found`, naming the best `search` hit for it when
//!   there is one.
//!
//! Tokens: the text is lower-cased, accents of common Latin letters are
//! removed (`í` → `i`), apostrophes are dropped (`world's` → `worlds`), and
//! the rest is split at every character that is not a letter or a digit. A
//! light stemmer then drops a plural ending (`ies` → `y` in words over 4
//! letters; a final `s` in words over 3 letters, unless they end in `ss`,
//! `us` or `is`). An entry's tokens are its title's, counted twice, and its
//! text's. Query tokens are de-duplicated and common English stop words
//! (`the`, `of`, `what`, `is`, …) are left out, unless the query has nothing
//! else. A query with no tokens at all, or over 1,000 characters, is
//! `invalid-input`, as are missing, mistyped or unknown arguments; an
//! unknown tool is `not-found`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use deepwasm_sdk::config::Fields;
use deepwasm_sdk::tool::{self, Guest};
use deepwasm_sdk::types::{Error, ToolOutput, ToolSpec};
use serde::Serialize;

/// The bundled corpus.
pub const CORPUS: &str = include_str!("corpus.txt");
/// BM25 term-frequency saturation.
pub const K1: f64 = 1.2;
/// BM25 length normalisation.
pub const B: f64 = 0.75;
/// Hits returned when `limit` is absent.
pub const DEFAULT_LIMIT: usize = 3;
/// Most hits one search returns.
pub const MAX_LIMIT: usize = 10;
/// Longest snippet, in characters (before the `…`).
pub const SNIPPET_CHARS: usize = 240;
/// Longest query, in characters.
pub const MAX_QUERY_CHARS: usize = 1000;

const SEARCH_SCHEMA: &str = r#"{"type":"object","properties":{"query":{"type":"string","description":"words to look for"},"limit":{"type":"integer","minimum":1,"maximum":10,"description":"how many results, default 3"}},"required":["query"],"additionalProperties":false}"#;
const GET_SCHEMA: &str = r#"{"type":"object","properties":{"title":{"type":"string","description":"the title of an entry"}},"required":["title"],"additionalProperties":false}"#;

const STOP_WORDS: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "be", "by", "did", "do", "does", "for", "from",
    "how", "in", "is", "it", "its", "me", "of", "on", "or", "tell", "that", "the", "this", "to",
    "was", "were", "what", "when", "where", "which", "who", "whom", "why", "with",
];

/// One corpus entry.
#[derive(Debug)]
pub struct Entry {
    /// The title, from its `# ` line.
    pub title: String,
    /// The paragraph.
    pub text: String,
}

struct Doc {
    terms: BTreeMap<String, u32>,
    len: usize,
}

/// The parsed corpus and its BM25 statistics.
pub struct Index {
    /// The entries, in corpus order.
    pub entries: Vec<Entry>,
    docs: Vec<Doc>,
    doc_freq: BTreeMap<String, usize>,
    avg_len: f64,
}

/// One search result.
#[derive(Debug, Serialize, PartialEq)]
pub struct Hit {
    /// The entry's title.
    pub title: String,
    /// The best-matching sentence.
    pub snippet: String,
    /// The BM25 score, rounded to 3 decimals.
    pub score: f64,
}

fn fold(c: char) -> char {
    match c {
        'á' | 'à' | 'â' | 'ä' | 'ã' | 'å' => 'a',
        'é' | 'è' | 'ê' | 'ë' => 'e',
        'í' | 'ì' | 'î' | 'ï' => 'i',
        'ó' | 'ò' | 'ô' | 'ö' | 'õ' => 'o',
        'ú' | 'ù' | 'û' | 'ü' => 'u',
        'ç' => 'c',
        'ñ' => 'n',
        'ý' | 'ÿ' => 'y',
        c => c,
    }
}

/// Lower-case and strip accents.
fn fold_text(text: &str) -> String {
    text.chars()
        .flat_map(char::to_lowercase)
        .map(fold)
        .collect()
}

/// The words of `text`: folded, apostrophes dropped, split at non-alphanumerics.
fn words(text: &str) -> Vec<String> {
    fold_text(text)
        .chars()
        .filter(|c| !matches!(c, '\'' | '’'))
        .collect::<String>()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Drop a plural ending.
fn stem(word: &str) -> String {
    let n = word.chars().count();
    if n > 4
        && let Some(base) = word.strip_suffix("ies")
    {
        return format!("{base}y");
    }
    if n > 3
        && word.ends_with('s')
        && !(word.ends_with("ss") || word.ends_with("us") || word.ends_with("is"))
    {
        return word[..word.len() - 1].to_string();
    }
    word.to_string()
}

/// The index terms of `text`.
pub fn tokens(text: &str) -> Vec<String> {
    words(text).iter().map(|w| stem(w)).collect()
}

/// The terms of a query: de-duplicated, in order, without stop words
/// unless nothing else is left.
pub fn query_terms(query: &str) -> Vec<String> {
    let all = words(query);
    let content: Vec<&String> = all
        .iter()
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .collect();
    let chosen: Vec<&String> = if content.is_empty() {
        all.iter().collect()
    } else {
        content
    };
    let mut terms: Vec<String> = Vec::new();
    for w in chosen {
        let t = stem(w);
        if !terms.contains(&t) {
            terms.push(t);
        }
    }
    terms
}

/// Parse a corpus: `# title` lines, each followed by its paragraph.
pub fn parse(corpus: &str) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    for line in corpus.lines() {
        let line = line.trim();
        if let Some(title) = line.strip_prefix("# ") {
            entries.push(Entry {
                title: title.trim().to_string(),
                text: String::new(),
            });
        } else if !line.is_empty()
            && let Some(entry) = entries.last_mut()
        {
            if !entry.text.is_empty() {
                entry.text.push(' ');
            }
            entry.text.push_str(line);
        }
    }
    entries
}

/// The sentences of `text`: split after `.`, `!` or `?` followed by whitespace.
pub fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if matches!(c, '.' | '!' | '?')
            && chars.peek().is_some_and(|(_, next)| next.is_whitespace())
        {
            let end = i + c.len_utf8();
            let s = text[start..end].trim();
            if !s.is_empty() {
                out.push(s);
            }
            start = end;
        }
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

fn cut(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let head: String = text.chars().take(max_chars).collect();
    let head = match head.rfind(char::is_whitespace) {
        Some(i) if i > 0 => &head[..i],
        _ => &head,
    };
    format!("{}…", head.trim_end_matches([',', ';', ':', ' ']))
}

fn title_key(title: &str) -> String {
    let folded = fold_text(title);
    let key = folded.split_whitespace().collect::<Vec<_>>().join(" ");
    match key.strip_prefix("the ") {
        Some(rest) => rest.to_string(),
        None => key,
    }
}

impl Index {
    /// Index these entries.
    pub fn new(entries: Vec<Entry>) -> Index {
        let mut doc_freq: BTreeMap<String, usize> = BTreeMap::new();
        let docs: Vec<Doc> = entries
            .iter()
            .map(|e| {
                let title = tokens(&e.title);
                let mut terms: BTreeMap<String, u32> = BTreeMap::new();
                let all: Vec<String> = title
                    .iter()
                    .chain(&title)
                    .cloned()
                    .chain(tokens(&e.text))
                    .collect();
                for t in &all {
                    *terms.entry(t.clone()).or_default() += 1;
                }
                for t in terms.keys() {
                    *doc_freq.entry(t.clone()).or_default() += 1;
                }
                Doc {
                    terms,
                    len: all.len(),
                }
            })
            .collect();
        let avg_len = docs.iter().map(|d| d.len).sum::<usize>() as f64 / docs.len().max(1) as f64;
        Index {
            entries,
            docs,
            doc_freq,
            avg_len,
        }
    }

    /// The bundled corpus, parsed and indexed once.
    pub fn bundled() -> &'static Index {
        static INDEX: OnceLock<Index> = OnceLock::new();
        INDEX.get_or_init(|| Index::new(parse(CORPUS)))
    }

    fn score(&self, doc: &Doc, terms: &[String]) -> f64 {
        let n = self.docs.len() as f64;
        terms
            .iter()
            .map(|t| {
                let tf = f64::from(doc.terms.get(t).copied().unwrap_or(0));
                if tf == 0.0 {
                    return 0.0;
                }
                let df = self.doc_freq.get(t).copied().unwrap_or(0) as f64;
                let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                let norm = K1 * (1.0 - B + B * doc.len as f64 / self.avg_len);
                idf * tf * (K1 + 1.0) / (tf + norm)
            })
            .sum()
    }

    /// The best `limit` entries for `query`, best first.
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<Hit>, Error> {
        if query.chars().count() > MAX_QUERY_CHARS {
            return Err(Error::invalid_input(format!(
                "arguments.query: longer than {MAX_QUERY_CHARS} characters"
            )));
        }
        let terms = query_terms(query);
        if terms.is_empty() {
            return Err(Error::invalid_input(
                "arguments.query: no words to search for",
            ));
        }
        let mut scored: Vec<(usize, f64)> = self
            .docs
            .iter()
            .enumerate()
            .map(|(i, d)| (i, self.score(d, &terms)))
            .filter(|(_, s)| *s > 0.0)
            .collect();
        // Stable: ties stay in corpus order.
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(scored
            .into_iter()
            .take(limit)
            .map(|(i, score)| {
                let entry = &self.entries[i];
                Hit {
                    title: entry.title.clone(),
                    snippet: cut(snippet(&entry.text, &terms), SNIPPET_CHARS),
                    score: (score * 1000.0).round() / 1000.0,
                }
            })
            .collect())
    }

    /// The entry titled `title` (see the crate docs for the matching rules).
    pub fn get(&self, title: &str) -> Result<&Entry, Error> {
        let key = title_key(title);
        if let Some(entry) = self.entries.iter().find(|e| title_key(&e.title) == key) {
            return Ok(entry);
        }
        let closest = self
            .search(title, 1)
            .ok()
            .and_then(|hits| hits.into_iter().next());
        Err(Error::not_found(match closest {
            Some(hit) => format!("no entry titled {title:?}; the closest is {:?}", hit.title),
            None => format!("no entry titled {title:?}; use search to find entries"),
        }))
    }
}

/// The sentence of `text` with the most distinct `terms` (the first on ties).
fn snippet<'a>(text: &'a str, terms: &[String]) -> &'a str {
    let mut best = ("", 0);
    for s in sentences(text) {
        let have = tokens(s);
        let n = terms.iter().filter(|t| have.contains(t)).count();
        if best.0.is_empty() || n > best.1 {
            best = (s, n);
        }
    }
    best.0
}

fn json<T: Serialize>(value: &T) -> Result<ToolOutput, Error> {
    serde_json::to_string(value)
        .map(ToolOutput::Json)
        .map_err(|e| Error::failed(format!("cannot write the result: {e}")))
}

/// Run the tool `name` with these arguments over `index`.
pub fn run(index: &Index, name: &str, arguments: &str) -> Result<ToolOutput, Error> {
    let args = Fields::parse("arguments", arguments)?;
    match name {
        "search" => {
            args.only(&["query", "limit"])?;
            let query: String = args.require("query")?;
            let limit: i64 = args.get_or("limit", DEFAULT_LIMIT as i64)?;
            if limit < 1 {
                return Err(args.error("limit", "must be at least 1"));
            }
            let limit = (limit as usize).min(MAX_LIMIT);
            json(&index.search(&query, limit)?)
        }
        "get" => {
            args.only(&["title"])?;
            let title: String = args.require("title")?;
            let entry = index.get(&title)?;
            #[derive(Serialize)]
            struct Full<'a> {
                title: &'a str,
                text: &'a str,
            }
            json(&Full {
                title: &entry.title,
                text: &entry.text,
            })
        }
        _ => Err(Error::not_found(format!(
            "no tool named {name:?}; this plugin has \"search\" and \"get\""
        ))),
    }
}

struct CorpusLookup;

impl Guest for CorpusLookup {
    fn describe() -> Vec<ToolSpec> {
        vec![
            tool::spec(
                "search",
                "Search a small encyclopedia (capitals, planets, chemical elements, \
                 inventions) and return the best matching entries.",
                SEARCH_SCHEMA,
            ),
            tool::spec(
                "get",
                "Get the full text of an encyclopedia entry by its title.",
                GET_SCHEMA,
            ),
        ]
    }

    fn call(name: String, arguments: String) -> Result<ToolOutput, Error> {
        run(Index::bundled(), &name, &arguments)
    }
}

deepwasm_sdk::export_tool!(CorpusLookup);

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> &'static Index {
        Index::bundled()
    }

    fn top(query: &str) -> String {
        index().search(query, 1).unwrap()[0].title.clone()
    }

    #[test]
    fn the_corpus_parses() {
        let entries = &index().entries;
        assert_eq!(entries.len(), 30);
        let mut titles: Vec<&str> = entries.iter().map(|e| e.title.as_str()).collect();
        titles.sort();
        titles.dedup();
        assert_eq!(titles.len(), 30, "titles are unique");
        for e in entries {
            assert!(!e.text.is_empty() && !e.text.contains('#'), "{}", e.title);
            let s = sentences(&e.text);
            assert!((2..=4).contains(&s.len()), "{}: {s:?}", e.title);
            for s in s {
                assert!(
                    s.ends_with('.') && s.chars().count() <= SNIPPET_CHARS,
                    "{s}"
                );
            }
        }
    }

    #[test]
    fn tokens_and_terms() {
        assert_eq!(
            tokens("Brasília's planets, moons & Berners-Lee"),
            ["brasilia", "planet", "moon", "berner", "lee"]
        );
        assert_eq!(
            tokens("Venus Uranus glass cities is gas"),
            ["venus", "uranus", "glass", "city", "is", "gas"]
        );
        assert_eq!(
            query_terms("What is the capital of France? The capital!"),
            ["capital", "france"]
        );
        assert_eq!(query_terms("what is the"), ["what", "is", "the"]);
        assert!(query_terms(" ,.; ").is_empty());
    }

    #[test]
    fn ranking() {
        assert_eq!(top("What is the capital of France?"), "Paris");
        assert_eq!(top("capital of Japan"), "Tokyo");
        assert_eq!(top("Australia capital"), "Canberra");
        assert_eq!(top("brasilia"), "Brasília");
        assert_eq!(top("red planet"), "Mars");
        assert_eq!(top("largest planet"), "Jupiter");
        assert_eq!(top("planet with rings"), "Saturn");
        assert_eq!(top("first walk on the moon 1969"), "The Moon");
        assert_eq!(top("atomic number 79"), "Gold");
        assert_eq!(top("Fe ferrum steel"), "Iron");
        assert_eq!(top("who invented the telephone"), "Telephone");
        assert_eq!(top("Wright brothers flight"), "Airplane");
        assert_eq!(top("who discovered penicillin"), "Penicillin");
        assert_eq!(top("Tim Berners-Lee"), "World Wide Web");
        assert_eq!(top("noble gas balloons"), "Helium");
    }

    #[test]
    fn hits_and_snippets() {
        let hits = index().search("capital of France", 3).unwrap();
        assert_eq!(hits.len(), 3);
        assert_eq!(hits[0].title, "Paris");
        assert_eq!(
            hits[0].snippet,
            "Paris is the capital and largest city of France."
        );
        assert!(hits[0].score > hits[1].score && hits[1].score >= hits[2].score);
        // The example of the crate docs.
        assert_eq!(
            serde_json::to_string(&hits[..1]).unwrap(),
            r#"[{"title":"Paris","snippet":"Paris is the capital and largest city of France.","score":4.336}]"#
        );
        assert_eq!(hits[0].score, (hits[0].score * 1000.0).round() / 1000.0);
        // The snippet is the sentence with the most query terms.
        let hits = index().search("Olympus Mons volcano", 1).unwrap();
        assert_eq!(
            hits[0].snippet,
            "Olympus Mons on Mars is the tallest volcano in the Solar System."
        );
        assert!(index().search("zebra quantum", 5).unwrap().is_empty());
        assert_eq!(index().search("planet", 100).unwrap().len(), 8);
        // Every entry has a "the"; the tool caps the limit at 10.
        assert_eq!(index().search("the", 100).unwrap().len(), 30);
        let Ok(ToolOutput::Json(out)) = run(index(), "search", r#"{"query":"the","limit":100}"#)
        else {
            panic!("json expected");
        };
        assert_eq!(
            serde_json::from_str::<Vec<serde_json::Value>>(&out)
                .unwrap()
                .len(),
            10
        );
        // Only the title matches: the first sentence.
        assert_eq!(snippet("One two. Three four.", &["zzz".into()]), "One two.");
    }

    #[test]
    fn tool_calls() {
        let ToolOutput::Json(out) =
            run(index(), "search", r#"{"query":"Edison bulb","limit":1}"#).unwrap()
        else {
            panic!("json expected");
        };
        let hits: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(hits[0]["title"], "Light bulb");
        assert!(
            out.starts_with(r#"[{"title":"Light bulb","snippet":"Thomas Edison made"#),
            "{out}"
        );
        let ToolOutput::Json(out) = run(index(), "get", r#"{"title":"  the  SUN "}"#).unwrap()
        else {
            panic!("json expected");
        };
        assert!(
            out.starts_with(r#"{"title":"The Sun","text":"The Sun is the star"#),
            "{out}"
        );
        assert!(run(index(), "get", r#"{"title":"moon"}"#).is_ok());
        assert!(run(index(), "get", r#"{"title":"Brasilia"}"#).is_ok());
        let msg = |r: Result<ToolOutput, Error>| match r {
            Err(e) => e,
            Ok(o) => panic!("expected an error, got {o:?}"),
        };
        assert!(matches!(
            msg(run(index(), "get", r#"{"title":"capital of Egypt"}"#)),
            Error::NotFound(m) if m == r#"no entry titled "capital of Egypt"; the closest is "Cairo""#
        ));
        assert!(matches!(
            msg(run(index(), "get", r#"{"title":"zebra"}"#)),
            Error::NotFound(m) if m == r#"no entry titled "zebra"; use search to find entries"#
        ));
        assert!(matches!(
            msg(run(index(), "search", r#"{"query":"x","limit":0}"#)),
            Error::InvalidInput(m) if m == "arguments.limit: must be at least 1"
        ));
        assert!(matches!(
            msg(run(index(), "search", r#"{"query":"?!"}"#)),
            Error::InvalidInput(_)
        ));
        assert!(matches!(
            msg(run(index(), "search", "{}")),
            Error::InvalidInput(_)
        ));
        assert!(matches!(
            msg(run(index(), "search", r#"{"query":"a","top":1}"#)),
            Error::InvalidInput(_)
        ));
        let long = format!(r#"{{"query":"{}"}}"#, "a ".repeat(600));
        assert!(matches!(
            msg(run(index(), "search", &long)),
            Error::InvalidInput(_)
        ));
        assert!(matches!(
            msg(run(index(), "find", "{}")),
            Error::NotFound(_)
        ));
    }

    #[test]
    fn cutting() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("one two three four", 9), "one two…");
        assert_eq!(cut("abcdefghij", 4), "abcd…");
    }
}
