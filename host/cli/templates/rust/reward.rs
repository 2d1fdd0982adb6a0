//! `{{name}}`: a deepwasm reward plugin (world `reward`).
//!
//! Scores 1.0 when a completion contains the config's `needle`, 0.0
//! otherwise. Config: `{"needle": "</think>"}` (the default needle).

use deepwasm_sdk::config::Fields;
use deepwasm_sdk::reward::{Guest, Sample};
use deepwasm_sdk::types::Error;

struct Plugin;

impl Guest for Plugin {
    fn score(samples: Vec<Sample>, config: String) -> Result<Vec<Option<f64>>, Error> {
        // A bad config is an error value: every sample of the batch gets it.
        let cfg = Fields::parse("config", &config)?;
        cfg.only(&["needle"])?;
        let needle: String = cfg.get_or("needle", "</think>".to_string())?;
        Ok(samples
            .iter()
            .map(|s| Some(if s.completion.contains(&needle) { 1.0 } else { 0.0 }))
            .collect())
    }
}

deepwasm_sdk::export_reward!(Plugin);
