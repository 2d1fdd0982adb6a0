//! `logits-probe`: a sampler plugin that makes one query of the logits
//! handle per step, for measuring what a query costs from inside a plugin.
//!
//! Config: `{"query": "top-k" | "argmax" | "copy-all" | "log-sum-exp", "k": 40}`
//! (defaults: `top-k`, k = 40).
//!
//! Behaviour, at every step: `prepare` answers `need-logits`; `decide` runs the
//! query and picks the best token it saw (for `log-sum-exp`, the argmax; for
//! `copy-all`, the last id, so that the copy is all the work there is).

use deepwasm_sdk::config::Fields;
use deepwasm_sdk::sampler::{Decision, Guest, GuestSequence, Logits, Prepared, Sequence};
use deepwasm_sdk::types::{Error, SamplingParams, TokenId};

struct Probe;

#[derive(Clone, Copy)]
enum Query {
    TopK(u32),
    Argmax,
    CopyAll,
    LogSumExp,
}

struct ProbeSequence {
    query: Query,
}

impl Guest for Probe {
    type Sequence = ProbeSequence;

    fn setup() -> Result<(), Error> {
        Ok(())
    }
}

impl GuestSequence for ProbeSequence {
    fn open(
        config: String,
        _prompt: Vec<TokenId>,
        _params: SamplingParams,
    ) -> Result<Sequence, Error> {
        let cfg = Fields::parse("config", &config)?;
        cfg.only(&["query", "k"])?;
        let k: u32 = cfg.get_or("k", 40)?;
        let query = match cfg.get_or("query", "top-k".to_string())?.as_str() {
            "top-k" => Query::TopK(k),
            "argmax" => Query::Argmax,
            "copy-all" => Query::CopyAll,
            "log-sum-exp" => Query::LogSumExp,
            other => {
                return Err(cfg.error(
                    "query",
                    format!("unknown query {other:?}; one of top-k, argmax, copy-all, log-sum-exp"),
                ));
            }
        };
        Ok(Sequence::new(ProbeSequence { query }))
    }

    fn prepare(&self, _step: u32, _new_tokens: Vec<TokenId>) -> Result<Prepared, Error> {
        Ok(Prepared::NeedLogits)
    }

    fn decide(&self, _step: u32, logits: &Logits) -> Result<Decision, Error> {
        let token = match self.query {
            Query::TopK(k) => logits.top_k(k).first().map_or(0, |t| t.token),
            Query::Argmax => logits.argmax().token,
            // The copy is the work measured: take its last entry's id.
            Query::CopyAll => (logits.copy_all().len() - 1) as TokenId,
            Query::LogSumExp => {
                std::hint::black_box(logits.log_sum_exp());
                logits.argmax().token
            }
        };
        Ok(Decision::Pick(token))
    }
}

deepwasm_sdk::export_sampler!(Probe);
