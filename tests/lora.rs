use candle_core::{DType, Device, Tensor};
use deepwasm_model::llama::Llama;
use deepwasm_model::lora::{CONFIG_FILE, LoraAdapter, LoraConfig, WEIGHTS_FILE};
use deepwasm_model::train::{
    AdamW, Completion, GrpoParams, LoraVars, TrainLlama, clip_grad_norm, group_loss,
};
use deepwasm_model::{CausalLm, LoadOptions, LoadedModel, SeqInput, load};

use crate::util::{default_model, fixture};

pub(crate) fn tiny() -> LoadedModel {
    let opts = LoadOptions {
        device: Device::Cpu,
        dtype: Some(DType::F32),
        ..LoadOptions::default()
    };
    load(&fixture("tiny-llama"), &opts).unwrap()
}

fn llama(m: &LoadedModel) -> &Llama {
    m.model.as_llama().expect("a Llama-family model")
}

/// Fill every variable with small deterministic values (a fresh adapter's
/// `B` is zero, which hides half of what is tested).
fn scramble(vars: &LoraVars, seed: u64) {
    for (k, v) in vars.vars().into_iter().enumerate() {
        let n = v.elem_count();
        let vals: Vec<f64> = (0..n)
            .map(|i| {
                (((i as u64 * 7919 + k as u64 * 104729 + seed) % 10007) as f64 * 0.37).sin() * 0.05
            })
            .collect();
        let t = Tensor::from_vec(vals, v.shape(), &Device::Cpu)
            .unwrap()
            .to_dtype(v.dtype())
            .unwrap();
        v.set(&t).unwrap();
    }
}

pub(crate) fn random_adapter(
    model: &Llama,
    rank: usize,
    targets: &[&str],
    seed: u64,
) -> LoraAdapter {
    random_adapter_of(&model.trainable(DType::F32).unwrap(), rank, targets, seed)
}

/// [`random_adapter`] of a model already expanded for training (expanding
/// the default model takes seconds and half a gigabyte).
pub(crate) fn random_adapter_of(
    train: &TrainLlama,
    rank: usize,
    targets: &[&str],
    seed: u64,
) -> LoraAdapter {
    let vars = LoraVars::init(
        train,
        LoraConfig::new(rank, 2.0 * rank as f64, targets, None),
        seed,
    )
    .unwrap();
    scramble(&vars, seed);
    vars.to_adapter().unwrap()
}

fn prefill_logits(model: &dyn CausalLm, tokens: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache();
    let out = model
        .forward_outputs(
            &mut [SeqInput {
                adapter: None,
                tokens,
                cache: &mut cache,
            }],
            &[deepwasm_model::Output::AllLogits],
        )
        .unwrap();
    out.logits.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn tokens() -> Vec<u32> {
    (0..20).map(|i| (i * 37 % 350 + 3) as u32).collect()
}

/// The adapter's gradient from candle's autograd matches central finite
/// differences of the GRPO loss (float64, so the differences are exact
/// enough to compare to 1e-5), with the KL term on and ratios away from 1.
#[test]
fn lora_gradients_match_finite_differences() {
    let m = tiny();
    let train = llama(&m).trainable(DType::F64).unwrap();
    let vars = LoraVars::init(&train, LoraConfig::new(2, 4.0, &[], None), 1).unwrap();
    scramble(&vars, 3);
    let seq = tokens();
    let prompt_len = 8;
    // A sampling policy a little away from the current one, inside the
    // clip range for most tokens and outside it for some.
    let current: Vec<f64> = train
        .token_logprobs(&seq, prompt_len, Some(&vars))
        .unwrap()
        .to_vec1()
        .unwrap();
    let old: Vec<f32> = current
        .iter()
        .enumerate()
        .map(|(i, &lp)| (lp + [0.05, -0.1, -0.3, 0.02][i % 4]) as f32)
        .collect();
    let params = GrpoParams {
        kl_beta: 0.1,
        clip_eps: 0.2,
    };
    let loss_of = |vars: &LoraVars| -> (Tensor, usize) {
        let c = Completion {
            tokens: &seq[prompt_len..],
            advantage: 0.8,
            old_logprobs: Some(&old),
            ref_logprobs: None,
        };
        let l = group_loss(&train, vars, &seq[..prompt_len], &[c], params, 1.0).unwrap();
        (l.loss, l.clipped)
    };
    let (loss, clipped) = loss_of(&vars);
    assert!(clipped > 0 && clipped < seq.len() - prompt_len, "{clipped}");
    let grads = loss.backward().unwrap();
    let h = 1e-6;
    let mut checked = 0;
    for (k, var) in vars.vars().into_iter().enumerate() {
        let grad: Vec<f64> = grads
            .get(var)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
        // A few entries of each of a few variables.
        if k % 5 != 0 {
            continue;
        }
        for &i in &[0, base.len() / 3, base.len() - 1] {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let (l, _) = loss_of(&vars);
                l.to_scalar::<f64>().unwrap()
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let err = (numeric - grad[i]).abs();
            assert!(
                err <= 1e-5 + 1e-4 * numeric.abs(),
                "variable {k} entry {i}: autograd {} vs finite differences {numeric}",
                grad[i]
            );
            checked += 1;
        }
    }
    assert!(checked >= 9, "{checked}");
}

/// Completions of one prompt computed together (the prompt once, each
/// completion seeing the prompt and itself only) give each completion's
/// log-probabilities as the serving pass does, with an adapter applied, and
/// the loss and gradient of computing each alone.
#[test]
fn a_groups_completions_computed_together_equal_each_alone() {
    let m = tiny();
    let base = llama(&m);
    let adapter = random_adapter(base, 2, &[], 5);
    let applied = base.with_adapter(&adapter).unwrap();
    let train32 = base.trainable(DType::F32).unwrap();
    let vars32 = LoraVars::from_adapter(&train32, &adapter).unwrap();
    let prompt: Vec<u32> = tokens()[..7].to_vec();
    // Lengths that differ, one of a single token.
    let completions: Vec<Vec<u32>> = [9usize, 1, 5, 12]
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            (0..n)
                .map(|i| ((i * 53 + k * 101) % 340 + 5) as u32)
                .collect()
        })
        .collect();
    let toks: Vec<&[u32]> = completions.iter().map(Vec::as_slice).collect();
    let together: Vec<f32> = train32
        .group_logprobs(&prompt, &toks, Some(&vars32))
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(together.len(), 27);
    let mut at = 0;
    for (k, c) in completions.iter().enumerate() {
        let mut seq = prompt.clone();
        seq.extend(c);
        let logits = prefill_logits(&applied, &seq);
        let vocab = logits.len() / seq.len();
        for (j, &t) in c.iter().enumerate() {
            let row = &logits[(prompt.len() + j - 1) * vocab..][..vocab];
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
            let lse = max + row.iter().map(|&x| (x - max).exp()).sum::<f32>().ln();
            let want = row[t as usize] - lse;
            assert!(
                (want - together[at + j]).abs() <= 1e-4,
                "completion {k} token {j}: {} together, {want} served",
                together[at + j]
            );
        }
        at += c.len();
    }

    let train = base.trainable(DType::F64).unwrap();
    let vars = LoraVars::init(&train, LoraConfig::new(2, 4.0, &[], None), 1).unwrap();
    scramble(&vars, 9);
    let params = GrpoParams {
        kl_beta: 0.1,
        clip_eps: 0.2,
    };
    // A sampling policy away from the current one for two completions, so
    // some ratios clip; the others are on-policy.
    let olds: Vec<Option<Vec<f32>>> = completions
        .iter()
        .enumerate()
        .map(|(k, c)| {
            (k % 2 == 0).then(|| {
                let mut seq = prompt.clone();
                seq.extend(c);
                let lp: Vec<f64> = train
                    .token_logprobs(&seq, prompt.len(), Some(&vars))
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                lp.iter()
                    .enumerate()
                    .map(|(i, &x)| (x + [0.05, -0.3, 0.25][i % 3]) as f32)
                    .collect()
            })
        })
        .collect();
    let advantages = [0.9, -1.2, 0.4, -0.6];
    let group: Vec<Completion<'_>> = completions
        .iter()
        .zip(&olds)
        .zip(advantages)
        .map(|((c, old), advantage)| Completion {
            tokens: c,
            advantage,
            old_logprobs: old.as_deref(),
            ref_logprobs: None,
        })
        .collect();
    let weight = 0.25;
    let g = group_loss(&train, &vars, &prompt, &group, params, weight).unwrap();
    assert!(g.clipped > 0, "no ratio was clipped");
    let grads = g.loss.backward().unwrap();
    let (mut loss, mut clipped) = (0.0, 0);
    let mut each: Vec<Vec<f64>> = Vec::new();
    for (k, c) in group.iter().enumerate() {
        let l = group_loss(&train, &vars, &prompt, std::slice::from_ref(c), params, 1.0).unwrap();
        assert!((l.kl[0] - g.kl[k]).abs() <= 1e-12, "completion {k}: KL");
        clipped += l.clipped;
        let scaled = (l.loss * weight).unwrap();
        loss += scaled.to_scalar::<f64>().unwrap();
        let gr = scaled.backward().unwrap();
        for (i, v) in vars.vars().into_iter().enumerate() {
            let vals: Vec<f64> = gr.get(v).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            match each.get_mut(i) {
                Some(acc) => acc.iter_mut().zip(vals).for_each(|(a, x)| *a += x),
                None => each.push(vals),
            }
        }
    }
    assert_eq!(g.clipped, clipped);
    assert_eq!(g.tokens, 27);
    let together = g.loss.to_scalar::<f64>().unwrap();
    assert!((together - loss).abs() <= 1e-12, "{together} vs {loss}");
    for (i, v) in vars.vars().into_iter().enumerate() {
        let got: Vec<f64> = grads
            .get(v)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let d = got
            .iter()
            .zip(&each[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(d <= 1e-12, "variable {i}: gradients differ by {d}");
    }
}

/// One AdamW step on a fixed batch (its sampling policy's log-probabilities
/// held) lowers the batch's GRPO loss, and clipping the gradient's norm
/// bounds it.
#[test]
fn one_step_on_a_fixed_batch_lowers_the_loss() {
    let m = tiny();
    let train = llama(&m).trainable(DType::F32).unwrap();
    let vars = LoraVars::init(&train, LoraConfig::new(4, 8.0, &[], None), 7).unwrap();
    let seqs: Vec<Vec<u32>> = (0..4)
        .map(|s| {
            (0..16)
                .map(|i| ((i * 31 + s * 17) % 350 + 3) as u32)
                .collect()
        })
        .collect();
    let advantages = [1.2, -0.9, 0.4, -0.7];
    let old: Vec<Vec<f32>> = seqs
        .iter()
        .map(|s| {
            train
                .token_logprobs(s, 6, Some(&vars))
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect();
    let params = GrpoParams::default();
    let batch_loss = |vars: &LoraVars| -> Tensor {
        let mut total: Option<Tensor> = None;
        for ((s, a), o) in seqs.iter().zip(advantages).zip(&old) {
            let c = Completion {
                tokens: &s[6..],
                advantage: a,
                old_logprobs: Some(o),
                ref_logprobs: None,
            };
            let l = group_loss(&train, vars, &s[..6], &[c], params, 0.25)
                .unwrap()
                .loss;
            total = Some(match total {
                Some(t) => (t + l).unwrap(),
                None => l,
            });
        }
        total.unwrap()
    };
    let before = batch_loss(&vars);
    let grads = before.backward().unwrap();
    let list = vars.vars();
    let mut g: Vec<Tensor> = list.iter().map(|v| grads.get(v).unwrap().clone()).collect();
    let norm = clip_grad_norm(&mut g, 1e-3).unwrap();
    assert!(norm > 1e-3, "the gradient vanished: {norm}");
    let clipped = clip_grad_norm(&mut g.clone(), f64::INFINITY).unwrap();
    assert!((clipped - 1e-3).abs() < 1e-6, "{clipped}");
    let mut opt = AdamW::new(&list, 1e-2).unwrap();
    opt.update(&list, &g).unwrap();
    let before = before.to_scalar::<f32>().unwrap();
    let after = batch_loss(&vars).to_scalar::<f32>().unwrap();
    assert!(
        after < before - 1e-3,
        "the loss went from {before} to {after}"
    );
}

/// An adapter written in PEFT's layout reads back to the same weights and
/// the same logits, to the bit.
#[test]
fn a_saved_adapter_reloads_to_identical_logits() {
    let m = tiny();
    let base = llama(&m);
    let adapter = random_adapter(base, 3, &["q_proj", "v_proj", "down_proj"], 5);
    let seq = tokens();
    let before = prefill_logits(&base.with_adapter(&adapter).unwrap(), &seq);
    let dir = tempfile::tempdir().unwrap();
    adapter.save(dir.path()).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 3);
    let names =
        candle_core::safetensors::load(dir.path().join(WEIGHTS_FILE), &Device::Cpu).unwrap();
    assert!(
        names.contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"),
        "{:?}",
        names.keys().collect::<Vec<_>>()
    );
    assert_eq!(names.len(), 2 * 3 * 2);
    let again = LoraAdapter::load(dir.path(), &Device::Cpu).unwrap();
    let after = prefill_logits(&base.with_adapter(&again).unwrap(), &seq);
    assert_eq!(before, after);
    // And the adapter changes the logits at all.
    assert!(max_diff(&before, &prefill_logits(base, &seq)) > 1e-3);
}

/// Merging an adapter into the weights gives the logits of applying it at
/// run time, and so does the training forward pass: on the tiny dense
/// model and on the default model's quantized weights.
#[test]
fn merging_an_adapter_gives_the_logits_of_applying_it_at_run_time() {
    let m = tiny();
    let seq = tokens();
    for (name, base, tol) in [
        ("tiny", llama(&m), 1e-4f32),
        ("default", default_model().model.as_llama().unwrap(), 2e-3),
    ] {
        let adapter = random_adapter(base, 4, &[], 11);
        let applied = base.with_adapter(&adapter).unwrap();
        let run_time = prefill_logits(&applied, &seq);
        let merged = prefill_logits(&applied.merged().unwrap(), &seq);
        let scale = run_time.iter().fold(0.0f32, |a, x| a.max(x.abs()));
        let d = max_diff(&run_time, &merged);
        assert!(
            d <= tol * scale.max(1.0),
            "{name}: merged differs by {d} (logits up to {scale})"
        );
        // The training pass, with the same adapter as variables.
        let train: TrainLlama = base.trainable(DType::F32).unwrap();
        let vars = LoraVars::from_adapter(&train, &adapter).unwrap();
        let trained: Vec<f32> = train
            .logits(&seq, Some(&vars))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let d = max_diff(&run_time, &trained);
        assert!(
            d <= tol * scale.max(1.0),
            "{name}: training pass differs by {d}"
        );
    }
}

/// Adapters that do not fit are refused with what is wrong, and where.
#[test]
fn adapters_that_do_not_fit_are_refused_with_the_reason() {
    let m = tiny();
    let base = llama(&m);
    let dir = tempfile::tempdir().unwrap();
    let err = LoraAdapter::load(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains(CONFIG_FILE), "{err}");
    // A rank-2 adapter of another shape of model.
    let mut adapter = random_adapter(base, 2, &["q_proj"], 1);
    let pair = adapter.pairs.values_mut().next().unwrap();
    pair.a = Tensor::zeros((2, 32), DType::F32, &Device::Cpu).unwrap();
    let Err(err) = base.with_adapter(&adapter) else {
        panic!("a misshapen adapter was applied")
    };
    let err = err.to_string();
    assert!(err.contains("q_proj") && err.contains("[2, 64]"), "{err}");
    // A config that is not LoRA.
    let adapter = random_adapter(base, 2, &["q_proj"], 1);
    adapter.save(dir.path()).unwrap();
    let path = dir.path().join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"LORA\"", "\"IA3\"")).unwrap();
    let err = LoraAdapter::load(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("IA3") && err.contains(CONFIG_FILE), "{err}");
}

fn train(out: &std::path::Path, prompts: &std::path::Path, steps: &str, extra: &[&str]) -> String {
    let o = train_output(out, prompts, steps, extra);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    err
}

fn train_output(
    out: &std::path::Path,
    prompts: &std::path::Path,
    steps: &str,
    extra: &[&str],
) -> std::process::Output {
    let config = r#"length-penalty={"unit":"chars","max_length":60,"buffer":50}"#;
    let tiny = fixture("tiny-llama");
    let mut args = vec![
        "train",
        "grpo",
        "--model",
        tiny.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--reward",
        crate::util::artifacts::LENGTH_PENALTY,
        "--config",
        config,
        "--group-size",
        "4",
        "--max-tokens",
        "16",
        "--lr",
        "1e-2",
        "--lora-rank",
        "4",
        "--steps",
        steps,
        "--save-every",
        "2",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    std::process::Command::new(crate::util::deepwasm_bin())
        .args(&args)
        .env(
            "DEEPWASM_COMPONENT_CACHE",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-cache"),
        )
        .output()
        .unwrap()
}

fn log_lines(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `deepwasm train grpo` end to end on the tiny model: per-step lines, a
/// JSONL log, checkpoints and a PEFT adapter; a run stopped after a
/// checkpoint and resumed ends with the adapter of a run never stopped.
#[test]
fn train_grpo_resumes_from_a_checkpoint_to_the_adapter_of_an_unbroken_run() {
    let prompts = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        prompts.path(),
        "{\"prompt\": \"hello there\"}\n{\"prompt\": \"one two three\"}\n",
    )
    .unwrap();
    let whole = tempfile::tempdir().unwrap();
    let err = train(whole.path(), prompts.path(), "4", &[]);
    assert!(err.contains("step 4/4: reward"), "{err}");
    let broken = tempfile::tempdir().unwrap();
    train(broken.path(), prompts.path(), "2", &[]);
    // A run killed after its checkpoint leaves the adapter of step 2 only
    // there; the resumed run goes on from it.
    let err = train(broken.path(), prompts.path(), "4", &["--resume"]);
    assert!(err.contains("resuming after step 2"), "{err}");
    let a = LoraAdapter::load(whole.path(), &Device::Cpu).unwrap();
    let b = LoraAdapter::load(broken.path(), &Device::Cpu).unwrap();
    assert_eq!(a.pairs.len(), 2 * 7);
    let mut moved = 0.0f32;
    for (key, pa) in &a.pairs {
        let pb = b.pair(key.0, &key.1).unwrap();
        for (x, y) in [(&pa.a, &pb.a), (&pa.b, &pb.b)] {
            let (x, y): (Vec<f32>, Vec<f32>) = (
                x.flatten_all().unwrap().to_vec1().unwrap(),
                y.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert!(max_diff(&x, &y) < 1e-6, "{key:?} differs after resuming");
        }
        let bv: Vec<f32> = pa.b.flatten_all().unwrap().to_vec1().unwrap();
        moved = moved.max(bv.iter().fold(0.0, |m, v| m.max(v.abs())));
    }
    assert!(moved > 1e-4, "training never moved the adapter's B");
    // The logs agree step for step, each step once.
    let (la, lb) = (log_lines(whole.path()), log_lines(broken.path()));
    let steps = |l: &[serde_json::Value]| -> Vec<u64> {
        l.iter()
            .filter(|v| v.get("rewards").is_some())
            .map(|v| v["step"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(steps(&la), vec![1, 2, 3, 4]);
    assert_eq!(steps(&lb), vec![1, 2, 3, 4]);
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x["rewards"], y["rewards"], "{x} vs {y}");
    }
    for v in la.iter().filter(|v| v.get("rewards").is_some()) {
        for key in [
            "loss",
            "kl",
            "clip_fraction",
            "grad_norm",
            "tokens_per_second",
        ] {
            assert!(v[key].is_number(), "{key} missing from {v}");
        }
    }
    assert!(
        whole
            .path()
            .join("checkpoint-4/optimizer.safetensors")
            .is_file()
    );
    // A fresh run beside an earlier run's checkpoints is refused: a later
    // --resume would take theirs.
    let o = train_output(whole.path(), prompts.path(), "2", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--resume"), "{err}");
}

/// Sequences with different adapters (and none) share one forward pass,
/// and each row gets the logits its adapter gives alone.
#[test]
fn sequences_with_different_adapters_share_a_pass() {
    let m = tiny();
    let base = llama(&m);
    let x = random_adapter(base, 2, &[], 21);
    let y = random_adapter(base, 4, &["q_proj", "up_proj", "o_proj"], 22);
    let sx = base.serve_adapter("x", &x).unwrap();
    let sy = base.serve_adapter("y", &y).unwrap();
    let seq = tokens();
    let alone = [
        prefill_logits(base, &seq[..7]),
        prefill_logits(&base.with_adapter(&x).unwrap(), &seq[..9]),
        prefill_logits(&base.with_adapter(&x).unwrap(), &seq[2..12]),
        prefill_logits(&base.with_adapter(&y).unwrap(), &seq[..11]),
        prefill_logits(base, &seq[3..8]),
    ];
    let ranges = [(0, 7), (0, 9), (2, 12), (0, 11), (3, 8)];
    let adapters = [None, Some(&*sx), Some(&*sx), Some(&*sy), None];
    let mut caches: Vec<_> = (0..5).map(|_| base.new_cache()).collect();
    let mut inputs: Vec<SeqInput> = caches
        .iter_mut()
        .zip(ranges.iter().zip(adapters))
        .map(|(cache, (&(a, b), adapter))| SeqInput {
            tokens: &seq[a..b],
            cache,
            adapter,
        })
        .collect();
    let out = base
        .forward_outputs(&mut inputs, &[deepwasm_model::Output::AllLogits; 5])
        .unwrap();
    let all: Vec<f32> = out.logits.flatten_all().unwrap().to_vec1().unwrap();
    let mut at = 0;
    for (i, want) in alone.iter().enumerate() {
        let got = &all[at..at + want.len()];
        at += want.len();
        let d = max_diff(want, got);
        assert!(
            d < 1e-4,
            "sequence {i} differs from its adapter alone by {d}"
        );
    }
    assert_eq!(at, all.len());
}
