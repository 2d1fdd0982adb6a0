//! `deepwasm._native`: the plugin host bound for Python. The `deepwasm`
//! package (`host/python/deepwasm/`) wraps it in the shapes trainers expect:
//! a TRL reward function and a `transformers` logits processor.
//!
//! Nothing here reimplements the host: rewards are scored by
//! [`RewardPlugin::score_parallel`] under the same [`Limits`] as the CLI and
//! the server, and samplers run through the engine's [`PluginSampler`], with
//! its masks and biases applied by the engine's own
//! [`apply_mask`](deepwasm_engine::sampling::apply_mask) and
//! [`apply_bias`](deepwasm_engine::sampling::apply_bias).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use deepwasm_engine::sampler::{Decision, Prepared};
use deepwasm_engine::sampling::{SamplingParams, apply_bias, apply_mask};
use deepwasm_engine::{MissPolicy, ModelTokenizer, PluginSampler, Reply, Sampler, SamplerHosting};
use deepwasm_plugins::{
    EngineConfig, Grants, LimitHit, Limits, LogitsHandle, MIB, Plugin, PluginEngine, PluginError,
    RewardPlugin, Sample, SamplerPlugin, Sandbox, TokenizerAccess, World,
};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

/// One plugin engine per process: compiled components are cached on disk
/// (`$DEEPWASM_CACHE/components`, as the CLI's), so a trainer's workers
/// compile each plugin once.
fn engine() -> PyResult<&'static PluginEngine> {
    static ENGINE: OnceLock<Result<PluginEngine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            PluginEngine::new(EngineConfig {
                cache_dir: EngineConfig::default_cache_dir(),
                ..EngineConfig::default()
            })
            .map_err(|e| format!("cannot start the plugin engine: {e}"))
        })
        .as_ref()
        .map_err(|e| PyRuntimeError::new_err(e.clone()))
}

/// A plugin's name as the CLI gives it: the file name without `.wasm`.
fn name_of(path: &Path) -> String {
    path.file_stem()
        .map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into_owned())
}

fn load(path: &Path) -> PyResult<Plugin> {
    let bytes = std::fs::read(path)
        .map_err(|e| PyValueError::new_err(format!("cannot read {}: {e}", path.display())))?;
    engine()?
        .load(&name_of(path), &bytes, &Grants::default())
        .map_err(|e| PyValueError::new_err(format!("{}: {e}", path.display())))
}

/// The short name of the limit a call ran into, for Python's errors.
fn limit_name(hit: &LimitHit) -> &'static str {
    match hit {
        LimitHit::Deadline(_) => "deadline",
        LimitHit::Fuel(_) => "fuel",
        LimitHit::Memory { .. } => "memory",
        LimitHit::TableElements(_) => "table_elements",
        LimitHit::Stack => "stack",
        LimitHit::Instances(_) => "instances",
        LimitHit::Throttled(_) => "throttled",
    }
}

/// A failed call as Python sees it: (message, limit or None).
fn failure(e: &PluginError) -> (String, Option<&'static str>) {
    let limit = match e {
        PluginError::Limit { limit, .. } => Some(limit_name(limit)),
        _ => None,
    };
    (e.to_string(), limit)
}

/// `world`'s default limits, narrowed by `limits` (`fuel`, `memory_mib`,
/// `deadline_ms`), as a tenants file narrows them on the server.
fn limits_of(world: World, limits: Option<&Bound<'_, PyDict>>) -> PyResult<Limits> {
    let mut out = Limits::for_world(world);
    let Some(limits) = limits else {
        return Ok(out);
    };
    for (key, value) in limits.iter() {
        let key: String = key.extract()?;
        let number: u64 = value.extract().map_err(|_| {
            PyValueError::new_err(format!("limits[{key:?}] must be a whole number"))
        })?;
        match key.as_str() {
            "fuel" => out.fuel = Some(number),
            "memory_mib" => out.memory_bytes = number * MIB,
            "deadline_ms" => out.call_deadline = Duration::from_millis(number.max(1)),
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown limit {other:?}: the limits are fuel, memory_mib and deadline_ms"
                )));
            }
        }
    }
    Ok(out)
}

/// A reward plugin, scoring batches in parallel with the GIL released.
#[pyclass(module = "deepwasm._native", frozen)]
struct RewardHost {
    reward: RewardPlugin,
    config: String,
    name: String,
}

#[pymethods]
impl RewardHost {
    /// Load the reward at `path` with its JSON `config` under `limits`.
    #[new]
    #[pyo3(signature = (path, config = "{}".to_owned(), limits = None))]
    fn new(path: PathBuf, config: String, limits: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let plugin = load(&path)?;
        let name = plugin.name().to_owned();
        let sandbox = Sandbox::new(limits_of(World::Reward, limits)?);
        let reward = RewardPlugin::new(plugin, sandbox)
            .map_err(|e| PyValueError::new_err(format!("{}: {e}", path.display())))?;
        Ok(RewardHost {
            reward,
            config,
            name,
        })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Score one batch: each sample is (prompt, completion, completion ids,
    /// extra JSON). Answers, per sample, (score or None, error message or
    /// None, limit hit or None).
    #[pyo3(signature = (samples, threads = None, batch = 16))]
    fn score(
        &self,
        py: Python<'_>,
        samples: Vec<(String, String, Vec<u32>, String)>,
        threads: Option<usize>,
        batch: usize,
    ) -> Vec<(Option<f64>, Option<String>, Option<&'static str>)> {
        let samples: Vec<Sample> = samples
            .into_iter()
            .map(|(prompt, completion, completion_tokens, extra)| Sample {
                prompt,
                completion,
                completion_tokens,
                extra,
            })
            .collect();
        let threads =
            threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let scores = py.detach(|| {
            self.reward
                .score_parallel(&samples, &self.config, threads, batch)
        });
        scores
            .into_iter()
            .map(|s| match s {
                Ok(score) => (score, None, None),
                Err(e) => {
                    let (message, limit) = failure(&e);
                    (None, Some(message), limit)
                }
            })
            .collect()
    }
}

/// A sampler plugin and the tokenizer its `tokenizer` imports read.
#[pyclass(module = "deepwasm._native", frozen)]
struct SamplerHost {
    sampler: SamplerPlugin,
    tokenizer: Arc<ModelTokenizer>,
    budget: Duration,
    vocab_size: usize,
    eos: Vec<u32>,
}

/// The tokenizer at `path`: a model (GGUF file, or a Hugging Face
/// directory) read without its weights, or a `tokenizer.json`.
fn tokenizer_of(path: &Path) -> PyResult<(ModelTokenizer, usize, Vec<u32>)> {
    let bad = |e: &dyn std::fmt::Display| {
        PyValueError::new_err(format!("tokenizer {}: {e}", path.display()))
    };
    if path.extension().is_some_and(|e| e == "json") {
        let tokenizer = deepwasm_model::Tokenizer::from_files(path, None).map_err(|e| bad(&e))?;
        let vocab = tokenizer.vocab_size();
        let eos = tokenizer.eos().to_vec();
        let name = name_of(path);
        return Ok((
            ModelTokenizer::new(Arc::new(tokenizer), &name, vocab),
            vocab,
            eos,
        ));
    }
    let loaded = deepwasm_model::load_remote(path, None).map_err(|e| bad(&e))?;
    let vocab = loaded.model.info().vocab_size;
    let eos = loaded.tokenizer.eos().to_vec();
    Ok((
        ModelTokenizer::new(loaded.tokenizer.clone(), &loaded.name, vocab),
        vocab,
        eos,
    ))
}

#[pymethods]
impl SamplerHost {
    /// Load the sampler at `path`; `tokenizer` is the model it steers (or
    /// its `tokenizer.json`); `budget_ms` bounds each step's calls.
    #[new]
    #[pyo3(signature = (path, tokenizer, budget_ms = 250))]
    fn new(path: PathBuf, tokenizer: PathBuf, budget_ms: u64) -> PyResult<Self> {
        let plugin = load(&path)?;
        let (tokenizer, vocab_size, eos) = tokenizer_of(&tokenizer)?;
        let budget = Duration::from_millis(budget_ms.max(1));
        let tokenizer = Arc::new(tokenizer);
        let sampler = SamplerHosting::new(tokenizer.clone(), budget, MissPolicy::Wait)
            .load(plugin)
            .map_err(|e| PyValueError::new_err(format!("{}: {e}", path.display())))?;
        Ok(SamplerHost {
            sampler,
            tokenizer,
            budget,
            vocab_size,
            eos,
        })
    }

    /// The model's number of logits, as its files say.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The tokens that end a sequence.
    #[getter]
    fn eos_token_ids(&self) -> Vec<u32> {
        self.eos.clone()
    }

    #[getter]
    fn name(&self) -> String {
        self.sampler.plugin().name().to_owned()
    }

    /// The text of `ids`, as the plugin's tokenizer reads them.
    fn decode(&self, ids: Vec<u32>) -> String {
        TokenizerAccess::decode(&*self.tokenizer, &ids, false)
    }

    /// Open one sequence: its `config` (JSON) and prompt tokens.
    fn open(&self, py: Python<'_>, config: &str, prompt: Vec<u32>) -> PyResult<SamplerRow> {
        let mut sampler =
            PluginSampler::new(self.sampler.clone(), config, self.budget, MissPolicy::Wait);
        py.detach(|| sampler.begin(&prompt, &SamplingParams::default()))
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok(SamplerRow {
            state: std::sync::Mutex::new(RowState {
                sampler: Some(sampler),
                budget: self.budget,
            }),
        })
    }
}

/// One sequence's sampler.
#[pyclass(module = "deepwasm._native", frozen)]
struct SamplerRow {
    state: std::sync::Mutex<RowState>,
}

struct RowState {
    /// `None` once a call failed: the sequence is not called again.
    sampler: Option<PluginSampler>,
    budget: Duration,
}

/// How long a step may wait for a plugin still setting up or thinking:
/// the sampler's own calls are cut at their deadline; this bounds the
/// waiting between them.
const STEP_PATIENCE: u32 = 8;

impl RowState {
    fn wait<T>(
        &mut self,
        mut call: impl FnMut(&mut PluginSampler, Instant) -> Result<Reply<T>, String>,
    ) -> Result<T, String> {
        let sampler = self
            .sampler
            .as_mut()
            .ok_or("this sequence's sampler failed earlier")?;
        let give_up = Instant::now() + self.budget * STEP_PATIENCE;
        loop {
            let until = (Instant::now() + self.budget).min(give_up);
            match call(sampler, until)? {
                Reply::Ready(v) => return Ok(v),
                Reply::Pending if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Reply::Pending => {
                    return Err(format!(
                        "the sampler gave no answer within {:?}",
                        self.budget * STEP_PATIENCE
                    ));
                }
            }
        }
    }

    fn step_inner(
        &mut self,
        step: u32,
        new_tokens: &[u32],
        logits: Vec<f32>,
    ) -> Result<Edit, String> {
        let prepared = self.wait(|s, until| {
            s.prepare(step, new_tokens, until)
                .map_err(|e| e.to_string())
        })?;
        let decision = match prepared {
            Prepared::Decided(d) => d,
            Prepared::NeedLogits => {
                let handle = LogitsHandle::from(logits.clone());
                self.wait(|s, until| s.decide(step, &handle, until).map_err(|e| e.to_string()))?
            }
        };
        let vocab = logits.len();
        let check = |ts: Vec<u32>| match ts.iter().find(|&&t| t as usize >= vocab) {
            Some(t) => Err(format!(
                "the plugin chose token {t}, past the {vocab} scores of the row"
            )),
            None if ts.is_empty() => Err("the plugin forced no token".to_owned()),
            None => Ok(Edit::Force(ts)),
        };
        Ok(match decision {
            Decision::Pick(t) => check(vec![t])?,
            Decision::Force(ts) => check(ts)?,
            Decision::Stop => Edit::Stop,
            Decision::Sample(spec) => {
                let mut logits = logits;
                apply_mask(&mut logits, spec.allow.as_ref(), spec.deny.as_ref())
                    .map_err(|e| e.to_string())?;
                apply_bias(&mut logits, &spec.bias);
                Edit::Scores(logits)
            }
        })
    }
}

/// What a step does to the row of scores.
enum Edit {
    Force(Vec<u32>),
    Stop,
    Scores(Vec<f32>),
}

#[pymethods]
impl SamplerRow {
    /// Step `step` with the tokens appended since the last step and the
    /// row's logits (little-endian f32 bytes). Answers ("force", [ids]),
    /// ("stop", None) or ("scores", bytes of the masked and biased row).
    fn step<'py>(
        &self,
        py: Python<'py>,
        step: u32,
        new_tokens: Vec<u32>,
        logits: &[u8],
    ) -> PyResult<(&'static str, Py<PyAny>)> {
        if !logits.len().is_multiple_of(4) {
            return Err(PyValueError::new_err(
                "the logits must be float32 bytes (a multiple of 4)",
            ));
        }
        let row: Vec<f32> = logits
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let edit = py.detach(|| {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let edit = state.step_inner(step, &new_tokens, row);
            if edit.is_err() {
                // A failed sampler is not called again for this sequence.
                state.sampler = None;
            }
            edit
        });
        match edit {
            Ok(Edit::Force(ts)) => Ok(("force", ts.into_pyobject(py)?.into_any().unbind())),
            Ok(Edit::Stop) => Ok(("stop", py.None())),
            Ok(Edit::Scores(row)) => {
                let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
                Ok(("scores", PyBytes::new(py, &bytes).into_any().unbind()))
            }
            Err(message) => Err(PyRuntimeError::new_err(message)),
        }
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RewardHost>()?;
    m.add_class::<SamplerHost>()?;
    m.add_class::<SamplerRow>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
