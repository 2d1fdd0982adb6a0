//! Low-rank adapters (LoRA) of a Llama-family model's projections, in
//! PEFT's file layout.
//!
//! Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (2021):
//! a projection `y = x Wᵀ` becomes `y = x Wᵀ + s · (x Aᵀ) Bᵀ`, with `A`
//! `[r, in]`, `B` `[out, r]` and `s = lora_alpha / r`. An adapter is a
//! directory of two files, as PEFT saves and loads them:
//! - `adapter_config.json`: `peft_type: "LORA"`, `r`, `lora_alpha`,
//!   `target_modules`, `base_model_name_or_path`;
//! - `adapter_model.safetensors`: for layer `i` and module `m`,
//!   `base_model.model.model.layers.{i}.{self_attn|mlp}.{m}.lora_A.weight`
//!   and `….lora_B.weight`.
//!
//! The same files load in PEFT/transformers and here.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

/// The projections an adapter may change, in a layer's order.
pub const MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The config file of a PEFT adapter directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file of a PEFT adapter directory.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Where module `m` lives in a layer: `self_attn.q_proj`, `mlp.up_proj`.
pub fn module_path(m: &str) -> String {
    match m {
        "q_proj" | "k_proj" | "v_proj" | "o_proj" => format!("self_attn.{m}"),
        _ => format!("mlp.{m}"),
    }
}

/// The name of one of an adapter's tensors: `which` is `A` or `B`.
pub fn tensor_name(layer: usize, module: &str, which: char) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.lora_{which}.weight",
        module_path(module)
    )
}

/// What `adapter_config.json` holds that deepwasm reads and writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Always `LORA`.
    pub peft_type: String,
    #[serde(default = "causal_lm")]
    pub task_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default = "none")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub inference_mode: bool,
    /// Layers the adapter covers; `None` is every layer.
    #[serde(default)]
    pub layers_to_transform: Option<Vec<usize>>,
}

fn causal_lm() -> String {
    "CAUSAL_LM".into()
}

fn none() -> String {
    "none".into()
}

impl LoraConfig {
    /// A rank-`r` adapter of `target_modules` (every projection when empty).
    pub fn new(r: usize, lora_alpha: f64, target_modules: &[&str], base: Option<String>) -> Self {
        let targets = if target_modules.is_empty() {
            MODULES.to_vec()
        } else {
            target_modules.to_vec()
        };
        LoraConfig {
            peft_type: "LORA".into(),
            task_type: causal_lm(),
            r,
            lora_alpha,
            target_modules: targets.into_iter().map(String::from).collect(),
            base_model_name_or_path: base,
            lora_dropout: 0.0,
            bias: none(),
            fan_in_fan_out: false,
            use_rslora: false,
            use_dora: false,
            inference_mode: true,
            layers_to_transform: None,
        }
    }

    /// `lora_alpha / r`: what the low-rank product is multiplied by.
    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    /// Why deepwasm cannot apply this adapter as PEFT would, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.peft_type != "LORA" {
            return Err(format!(
                "`peft_type` is `{}`; deepwasm loads LORA adapters",
                self.peft_type
            ));
        }
        if self.r == 0 {
            return Err("`r` must be at least 1".into());
        }
        if !self.lora_alpha.is_finite() {
            return Err("`lora_alpha` must be a finite number".into());
        }
        if let Some(m) = self
            .target_modules
            .iter()
            .find(|m| !MODULES.contains(&m.as_str()))
        {
            return Err(format!(
                "target module `{m}` is not a projection deepwasm adapts ({})",
                MODULES.join(", ")
            ));
        }
        if self.target_modules.is_empty() {
            return Err("`target_modules` is empty".into());
        }
        for (flag, what) in [
            (self.fan_in_fan_out, "fan_in_fan_out"),
            (self.use_rslora, "use_rslora"),
            (self.use_dora, "use_dora"),
        ] {
            if flag {
                return Err(format!("`{what}: true` is not supported"));
            }
        }
        if self.bias != "none" {
            return Err(format!(
                "`bias: \"{}\"`: only adapters without biases are supported",
                self.bias
            ));
        }
        Ok(())
    }

    pub fn covers(&self, layer: usize) -> bool {
        self.layers_to_transform
            .as_ref()
            .is_none_or(|l| l.contains(&layer))
    }
}

/// One projection's pair: `a` `[r, in]`, `b` `[out, r]`.
#[derive(Clone, Debug)]
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
}

/// A loaded adapter: its config and, per layer and module, its pair.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    pub config: LoraConfig,
    /// By `(layer, module)`.
    pub pairs: BTreeMap<(usize, String), LoraPair>,
}

/// Why an adapter could not be read, written or applied.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("the adapter does not fit the model: {0}")]
    Mismatch(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl LoraAdapter {
    /// The pair of `module` in `layer`, if the adapter changes it.
    pub fn pair(&self, layer: usize, module: &str) -> Option<&LoraPair> {
        self.pairs.get(&(layer, module.to_owned()))
    }

    /// [`LoraAdapter::load`] into host memory (models move it to their
    /// device when they apply it).
    pub fn read(path: &Path) -> Result<LoraAdapter, LoraError> {
        LoraAdapter::load(path, &Device::Cpu)
    }

    /// Read an adapter directory (or its `adapter_model.safetensors`) onto
    /// `device`, in f32.
    pub fn load(path: &Path, device: &Device) -> Result<LoraAdapter, LoraError> {
        let dir = if path.is_file() {
            path.parent().unwrap_or(Path::new(".")).to_owned()
        } else {
            path.to_owned()
        };
        let config_path = dir.join(CONFIG_FILE);
        let invalid = |path: &Path, reason: String| LoraError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(&config_path).map_err(|source| LoraError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config: LoraConfig = serde_json::from_str(&text)
            .map_err(|e| invalid(&config_path, format!("not a LoRA adapter config: {e}")))?;
        config.check().map_err(|r| invalid(&config_path, r))?;
        let weights_path = dir.join(WEIGHTS_FILE);
        if !weights_path.is_file() {
            return Err(LoraError::Io {
                path: weights_path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let tensors = candle_core::safetensors::load(&weights_path, device)
            .map_err(|e| invalid(&weights_path, format!("not a safetensors file: {e}")))?;
        let mut pairs = BTreeMap::new();
        let mut seen = 0;
        for (name, t) in &tensors {
            let Some((layer, module, which)) = parse_name(name) else {
                return Err(invalid(
                    &weights_path,
                    format!("tensor `{name}` is not a LoRA weight of a Llama projection"),
                ));
            };
            if which != 'A' {
                continue;
            }
            let b_name = tensor_name(layer, &module, 'B');
            let b = tensors.get(&b_name).ok_or_else(|| {
                invalid(
                    &weights_path,
                    format!("`{name}` has no `{b_name}` beside it"),
                )
            })?;
            let (r_a, _) = t
                .dims2()
                .map_err(|_| invalid(&weights_path, format!("`{name}` is not a matrix")))?;
            let (_, r_b) = b
                .dims2()
                .map_err(|_| invalid(&weights_path, format!("`{b_name}` is not a matrix")))?;
            if r_a != config.r || r_b != config.r {
                return Err(invalid(
                    &weights_path,
                    format!(
                        "`{name}` and `{b_name}` have ranks {r_a} and {r_b}, the config says r = {}",
                        config.r
                    ),
                ));
            }
            if !config.target_modules.contains(&module) {
                return Err(invalid(
                    &weights_path,
                    format!("`{name}` adapts `{module}`, which `target_modules` does not list"),
                ));
            }
            pairs.insert(
                (layer, module),
                LoraPair {
                    a: t.to_dtype(DType::F32)?,
                    b: b.to_dtype(DType::F32)?,
                },
            );
            seen += 2;
        }
        if seen != tensors.len() {
            return Err(invalid(
                &weights_path,
                "a `lora_B` weight has no `lora_A` beside it".into(),
            ));
        }
        if pairs.is_empty() {
            return Err(invalid(
                &weights_path,
                "the adapter holds no weights".into(),
            ));
        }
        Ok(LoraAdapter { config, pairs })
    }

    /// Write the adapter as a PEFT directory. Each file is written beside
    /// its final name and renamed into place, the weights first, so a
    /// reader never sees a half-written file.
    pub fn save(&self, dir: &Path) -> Result<(), LoraError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LoraError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for ((layer, module), pair) in &self.pairs {
            tensors.insert(tensor_name(*layer, module, 'A'), pair.a.contiguous()?);
            tensors.insert(tensor_name(*layer, module, 'B'), pair.b.contiguous()?);
        }
        let weights = dir.join(WEIGHTS_FILE);
        let tmp = dir.join(format!(".{WEIGHTS_FILE}.partial"));
        candle_core::safetensors::save(&tensors, &tmp)?;
        std::fs::rename(&tmp, &weights).map_err(io(&weights))?;
        let config = dir.join(CONFIG_FILE);
        let tmp = dir.join(format!(".{CONFIG_FILE}.partial"));
        let text = serde_json::to_string_pretty(&self.config).expect("a config serializes");
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &config).map_err(io(&config))?;
        Ok(())
    }

    /// The adapter with its weights on `device`.
    pub fn to_device(&self, device: &Device) -> Result<LoraAdapter, LoraError> {
        let mut pairs = BTreeMap::new();
        for (k, p) in &self.pairs {
            pairs.insert(
                k.clone(),
                LoraPair {
                    a: p.a.to_device(device)?,
                    b: p.b.to_device(device)?,
                },
            );
        }
        Ok(LoraAdapter {
            config: self.config.clone(),
            pairs,
        })
    }

    /// Check every pair against a model of `layers` layers whose module
    /// `m` maps `in` to `out` (`shapes(m) = (out, in)`).
    pub fn check_shapes(
        &self,
        layers: usize,
        shapes: impl Fn(&str) -> (usize, usize),
    ) -> Result<(), LoraError> {
        for ((layer, module), pair) in &self.pairs {
            if *layer >= layers {
                return Err(LoraError::Mismatch(format!(
                    "it adapts layer {layer}; the model has {layers}"
                )));
            }
            if !self.config.covers(*layer) {
                return Err(LoraError::Mismatch(format!(
                    "it holds weights for layer {layer}, which `layers_to_transform` leaves out"
                )));
            }
            let (out, inp) = shapes(module);
            let expect_a = [self.config.r, inp];
            let expect_b = [out, self.config.r];
            if pair.a.dims() != expect_a || pair.b.dims() != expect_b {
                return Err(LoraError::Mismatch(format!(
                    "layer {layer} `{module}`: A {:?} and B {:?}, the model needs {expect_a:?} and {expect_b:?}",
                    pair.a.dims(),
                    pair.b.dims()
                )));
            }
        }
        Ok(())
    }
}

/// `(layer, module, 'A' | 'B')` of a PEFT tensor name.
fn parse_name(name: &str) -> Option<(usize, String, char)> {
    let rest = name.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (path, which) = rest.rsplit_once(".lora_")?;
    let which = match which {
        "A.weight" => 'A',
        "B.weight" => 'B',
        _ => return None,
    };
    let module = MODULES.iter().find(|m| module_path(m) == path)?;
    Some((layer, (*module).to_owned(), which))
}

/// An adapter laid out for serving: applied per sequence in a batched pass
/// ([`crate::SeqInput::adapter`]). Made by
/// [`crate::CausalLm::prepare_adapter`].
pub struct ServedAdapter {
    name: String,
    id: u64,
    pub(crate) layers: Vec<crate::llama::LayerDeltas>,
}

impl std::fmt::Debug for ServedAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedAdapter")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ServedAdapter {
    pub(crate) fn new(name: &str, layers: Vec<crate::llama::LayerDeltas>) -> ServedAdapter {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        ServedAdapter {
            name: name.to_owned(),
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            layers,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Unique in this process: what caches built under the adapter are
    /// keyed by.
    pub fn id(&self) -> u64 {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in MODULES {
            for which in ['A', 'B'] {
                let name = tensor_name(3, m, which);
                assert_eq!(parse_name(&name), Some((3, m.to_owned(), which)));
            }
        }
        assert_eq!(
            parse_name("base_model.model.model.layers.0.mlp.q_proj.lora_A.weight"),
            None
        );
        assert_eq!(
            parse_name("base_model.model.model.layers.x.self_attn.q_proj.lora_A.weight"),
            None
        );
    }

    #[test]
    fn configs_deepwasm_cannot_apply_are_refused_with_the_reason() {
        let mut c = LoraConfig::new(4, 8.0, &[], None);
        assert!(c.check().is_ok());
        c.use_dora = true;
        assert!(c.check().unwrap_err().contains("use_dora"));
        let mut c = LoraConfig::new(4, 8.0, &["q_proj", "lm_head"], None);
        assert!(c.check().unwrap_err().contains("lm_head"));
        c.target_modules = vec!["q_proj".into()];
        c.r = 0;
        assert!(c.check().is_err());
    }
}
