//! `/metrics` in the Prometheus text format: requests, tokens, latencies,
//! plugin work and limit hits, per tenant, and the state of the batch.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::tenants::TenantsCell;
use deepwasm_engine::{LogitsTraffic, SchedulerStats};

type Labels = Vec<(&'static str, String)>;

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
    ttft: Family<Labels, Histogram>,
    ignored_fields: Family<Labels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    pub fn new(
        tenants: Arc<TenantsCell>,
        store: Arc<crate::store::Store>,
        ledger: Option<deepwasm_state::Ledger>,
        scheduler: Arc<SchedulerStats>,
        logits: Arc<LogitsTraffic>,
    ) -> Self {
        let mut registry = Registry::with_prefix("deepwasm");
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests answered, by tenant, endpoint and status",
            requests.clone(),
        );
        let latency = Family::<Labels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a request (for streams: to the last byte), by tenant and endpoint",
            latency.clone(),
        );
        let ttft = Family::<Labels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from a generation request to its first streamed token, by tenant",
            ttft.clone(),
        );
        let ignored_fields = Family::<Labels, Counter>::default();
        registry.register(
            "request_ignored_fields",
            "Unknown request fields accepted and ignored, by endpoint and field (fields OpenAI defines by name, any other as `other`)",
            ignored_fields.clone(),
        );
        registry.register_collector(Box::new(Live {
            tenants,
            store,
            ledger,
            scheduler,
            logits,
        }));
        Metrics {
            registry,
            requests,
            latency,
            ttft,
            ignored_fields,
        }
    }

    /// Count a request answered.
    pub fn request(&self, tenant: &str, endpoint: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&vec![
                ("tenant", tenant.to_owned()),
                ("endpoint", endpoint.to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
        self.latency
            .get_or_create(&vec![
                ("tenant", tenant.to_owned()),
                ("endpoint", endpoint.to_owned()),
            ])
            .observe(took.as_secs_f64());
    }

    /// Count an unknown request field ignored; `field` is one of a fixed
    /// set of names, so clients cannot grow the label set.
    pub fn ignored_field(&self, endpoint: &str, field: &'static str) {
        self.ignored_fields
            .get_or_create(&vec![
                ("endpoint", endpoint.to_owned()),
                ("field", field.to_owned()),
            ])
            .inc();
    }

    /// Record a time to first token.
    pub fn first_token(&self, tenant: &str, took: Duration) {
        self.ttft
            .get_or_create(&vec![("tenant", tenant.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("cannot encode the metrics: {e}");
        }
        out
    }
}

/// Values read at scrape time: tenants' token and plugin counters, the batch.
struct Live {
    tenants: Arc<TenantsCell>,
    store: Arc<crate::store::Store>,
    ledger: Option<deepwasm_state::Ledger>,
    scheduler: Arc<SchedulerStats>,
    logits: Arc<LogitsTraffic>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let current = self.tenants.current();
        let tenants = current.all();
        type Reading = fn(&crate::tenants::Tenant) -> u64;
        let counters: [(&str, &str, Reading); 6] = [
            ("prompt_tokens", "Prompt tokens processed, by tenant", |t| {
                t.prompt_tokens.load(Ordering::Relaxed)
            }),
            ("completion_tokens", "Tokens generated, by tenant", |t| {
                t.completion_tokens.load(Ordering::Relaxed)
            }),
            (
                "plugin_calls",
                "Calls into plugins (instantiations included), by tenant",
                |t| t.meter.usage().calls,
            ),
            ("plugin_fuel", "Fuel burned by plugins, by tenant", |t| {
                t.meter.usage().fuel
            }),
            (
                "plugin_wall_microseconds",
                "Wall time inside plugins, by tenant",
                |t| t.meter.usage().wall_us,
            ),
            (
                "plugin_limit_hits",
                "Plugin calls stopped by a limit (deadline, fuel, memory, stack, tables), by tenant",
                |t| t.meter.usage().limit_hits,
            ),
        ];
        for (name, help, read) in counters {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for t in tenants {
                let labels = [("tenant", t.name.as_str())];
                ConstCounter::new(read(t)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "plugins_loaded",
            "Plugins loaded (compiled and linked) in this process, by tenant",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for t in tenants {
            let labels = [("tenant", t.name.as_str())];
            let n = i64::try_from(self.store.loaded_count(&t.name)).unwrap_or(i64::MAX);
            ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
        }
        if let Some(ledger) = &self.ledger {
            let stats = ledger.stats();
            for (name, help, value) in [
                (
                    "state_writes_failed",
                    "Writes of usage, spends or leases to the state database that failed (each retried)",
                    stats.failed_writes.load(Ordering::Relaxed),
                ),
                (
                    "state_admissions_failed",
                    "Admissions answered 503 because the state database did not answer",
                    stats.failed_admissions.load(Ordering::Relaxed),
                ),
            ] {
                let c = ConstCounter::new(value);
                c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
            }
            let behind = ConstGauge::new(i64::from(stats.behind.load(Ordering::Relaxed)));
            behind.encode(encoder.encode_descriptor(
                "state_behind",
                "1 while usage, spends or releases wait to be written to the state database",
                None,
                behind.metric_type(),
            )?)?;
        }
        let kv = &self.scheduler.kv;
        let gauges: [(&str, &str, i64); 6] = [
            (
                "batch_running",
                "Sequences decoding in the batch now",
                self.scheduler.running.load(Ordering::Relaxed) as i64,
            ),
            (
                "batch_waiting",
                "Sequences waiting for a place in the batch",
                self.scheduler.waiting.load(Ordering::Relaxed) as i64,
            ),
            (
                "kv_cache_tokens_budget",
                "Tokens of attention cache the running sequences may hold",
                i64::try_from(kv.budget_tokens.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
            ),
            (
                "kv_cache_tokens_in_use",
                "Tokens of attention cache held now, or promised to the running sequences' prompts",
                kv.reserved_tokens.load(Ordering::Relaxed) as i64,
            ),
            (
                "kv_cache_blocks_in_use",
                "Blocks of attention cache in use now (a block shared by sequences counts once)",
                kv.blocks_in_use.load(Ordering::Relaxed) as i64,
            ),
            (
                "kv_cache_blocks_cached",
                "Blocks held only by cached prefixes of ended requests (freed first when room is needed)",
                kv.blocks_cached.load(Ordering::Relaxed) as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let logits: [(&str, &str, u64); 4] = [
            (
                "logits_to_host_bytes",
                "Bytes of logits copied from the device to the host (rows kept on the device only)",
                self.logits.to_host_bytes(),
            ),
            (
                "logits_to_device_bytes",
                "Bytes sent to the device for queries of its logits (ids, masks, edited entries)",
                self.logits.to_device_bytes(),
            ),
            (
                "logits_device_rows",
                "Rows of logits kept on the device (a sequence's step each)",
                self.logits.device_rows(),
            ),
            (
                "logits_whole_rows_copied",
                "Rows of logits kept on the device that a query needed whole and copied",
                self.logits.whole_rows_copied(),
            ),
        ];
        for (name, help, value) in logits {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let steps = ConstCounter::new(self.scheduler.steps.load(Ordering::Relaxed));
        steps.encode(encoder.encode_descriptor(
            "forward_passes",
            "Forward passes run by the batch",
            None,
            steps.metric_type(),
        )?)?;
        let seq_steps = ConstCounter::new(self.scheduler.sequence_steps.load(Ordering::Relaxed));
        seq_steps.encode(encoder.encode_descriptor(
            "sequence_steps",
            "Sequence-steps decoded (divided by forward_passes: the mean batch size)",
            None,
            seq_steps.metric_type(),
        )?)?;
        let shared = ConstCounter::new(kv.shared_prompt_tokens.load(Ordering::Relaxed));
        shared.encode(encoder.encode_descriptor(
            "kv_cache_shared_prompt_tokens",
            "Prompt tokens taken from cached blocks of another sequence instead of computed",
            None,
            shared.metric_type(),
        )?)?;
        let preempted = ConstCounter::new(kv.preemptions.load(Ordering::Relaxed));
        preempted.encode(encoder.encode_descriptor(
            "kv_cache_preemptions",
            "Sequences preempted (cache freed, recomputed later) for want of attention cache",
            None,
            preempted.metric_type(),
        )?)?;
        Ok(())
    }
}
