//! `--upstream`: generating on another engine that speaks the OpenAI API.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use deepwasm_upstream::{Secret, Served, Upstream, UpstreamConfig};

#[derive(Args, Clone, Debug, Default)]
pub struct UpstreamArgs {
    /// Generate on this OpenAI-compatible engine (vLLM, SGLang, llama.cpp's
    /// llama-server, another deepwasm) instead of loading the model's
    /// weights: `--model` then only gives the tokenizer, chat template and
    /// shape, read without the weights. `http://host:port`.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// The environment variable that holds the upstream's API key, sent as
    /// a bearer token and never logged or shown.
    #[arg(long, value_name = "VAR", requires = "upstream")]
    pub upstream_key_env: Option<String>,
    /// The model name the upstream serves [default: the first it lists].
    #[arg(long, value_name = "NAME", requires = "upstream")]
    pub upstream_model: Option<String>,
    /// Tries after the first when the upstream fails before anything was
    /// streamed (refused connection, 502/503/504, 429, a timeout).
    #[arg(long, default_value_t = 2)]
    pub upstream_retries: u32,
    /// Seconds to wait for the upstream's first byte, and then between two
    /// streamed pieces.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub upstream_timeout_secs: u64,
}

impl UpstreamArgs {
    /// The upstream client and what it serves (asked at once, so a wrong
    /// URL, key or model fails at start), or `None` without `--upstream`.
    pub fn connect(&self) -> anyhow::Result<Option<(Upstream, Served)>> {
        let Some(url) = &self.upstream else {
            return Ok(None);
        };
        let api_key = match &self.upstream_key_env {
            Some(var) => match std::env::var(var) {
                Ok(key) if !key.is_empty() => Some(Secret::new(key)),
                _ => bail!(
                    "--upstream-key-env names `{var}`, but that environment variable is not set \
                     (or empty)"
                ),
            },
            None => None,
        };
        let timeout = Duration::from_secs(self.upstream_timeout_secs);
        let upstream = Upstream::new(UpstreamConfig {
            url: url.clone(),
            api_key,
            model: self.upstream_model.clone(),
            first_byte_timeout: timeout,
            idle_timeout: timeout,
            retries: self.upstream_retries,
            ..UpstreamConfig::default()
        })
        .with_context(|| format!("cannot use the upstream {url}"))?;
        let served = upstream
            .probe_blocking()
            .with_context(|| format!("the upstream {url} did not say what it serves"))?;
        Ok(Some((upstream, served)))
    }
}
