//! Helpers shared by the test modules.

use std::path::Path;
use std::sync::OnceLock;

use deepwasm_plugins::{EngineConfig, Grants, Limits, Plugin, PluginEngine, Sandbox, World};

pub use deepwasm_plugin_artifacts as artifacts;

/// One engine for the whole test binary, caching compiled components under
/// the target directory so reruns skip compilation.
pub fn engine() -> &'static PluginEngine {
    static ENGINE: OnceLock<PluginEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("component-cache");
        PluginEngine::new(EngineConfig {
            cache_dir: Some(dir),
            ..EngineConfig::default()
        })
        .expect("creating the plugin engine")
    })
}

/// Load a plugin built from `plugins/rust/<name>` with every grant.
pub fn plugin(path: &str) -> Plugin {
    engine()
        .load_file(Path::new(path), &Grants::default())
        .unwrap_or_else(|e| panic!("loading {path}: {e}"))
}

/// A sandbox with the defaults of `world`, narrowed by `f`.
pub fn sandbox(world: World, f: impl FnOnce(&mut Limits)) -> Sandbox {
    let mut limits = Limits::for_world(world);
    f(&mut limits);
    Sandbox::new(limits)
}

/// Deterministic pseudo-random logits.
pub fn logits(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 20.0 - 10.0
        })
        .collect()
}

/// The DeepSeek-V3/R1 vocabulary size: 129,280 logits per step.
pub const DEEPSEEK_VOCAB: usize = 129_280;

/// The path of the `deepwasm` binary under test.
pub fn deepwasm_bin() -> &'static str {
    env!("CARGO_BIN_EXE_deepwasm")
}

/// The model cache `scripts/setup` fills: `$DEEPWASM_CACHE/models`, default
/// `~/.cache/deepwasm/models`.
pub fn models_dir() -> std::path::PathBuf {
    let base = std::env::var_os("DEEPWASM_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").expect("HOME is set")).join(".cache/deepwasm")
        });
    base.join("models")
}

/// The default model's GGUF file; fails the test (not skips it) when the
/// cache lacks it.
pub fn default_model_path() -> std::path::PathBuf {
    let p = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} is missing: run scripts/setup", p.display());
    p
}

/// The default model, loaded once per test binary.
pub fn default_model() -> &'static deepwasm_engine::Engine {
    static ENGINE: OnceLock<deepwasm_engine::Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let loaded = deepwasm_model::load(
            &default_model_path(),
            &deepwasm_model::LoadOptions::default(),
        )
        .expect("loading the default model");
        deepwasm_engine::Engine::from(loaded)
    })
}

/// A path under `tests/fixtures/`.
pub fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A "compile bomb": a component whose one core module holds `functions`
/// tiny functions (`x + i`), which costs Cranelift ~60 µs and ~6 KiB each
/// to compile; 100,000 of them are a 1.1 MB upload that takes ~6 s of CPU
/// and ~590 MiB. It exports the scorer world with a mistyped `score`, so
/// past the compile it would still be refused, never run.
pub fn compile_bomb(functions: u32) -> Vec<u8> {
    use wasm_encoder::{
        Alias, CanonicalFunctionSection, CodeSection, Component, ComponentAliasSection,
        ComponentExportKind, ComponentExportSection, ComponentInstanceSection,
        ComponentTypeSection, ExportKind, ExportSection, Function, FunctionSection,
        InstanceSection, Module, ModuleArg, ModuleSection, PrimitiveValType, TypeSection, ValType,
    };
    let mut module = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], [ValType::I32]);
    module.section(&types);
    let mut funcs = FunctionSection::new();
    let mut code = CodeSection::new();
    for i in 0..functions {
        funcs.function(0);
        let mut f = Function::new([]);
        f.instructions()
            .local_get(0)
            .i32_const(i as i32)
            .i32_add()
            .end();
        code.function(&f);
    }
    module.section(&funcs);
    let mut exports = ExportSection::new();
    exports.export("f", ExportKind::Func, 0);
    module.section(&exports);
    module.section(&code);

    let mut component = Component::new();
    component.section(&ModuleSection(&module));
    let mut instances = InstanceSection::new();
    instances.instantiate(0, Vec::<(&str, ModuleArg)>::new());
    component.section(&instances);
    let mut aliases = ComponentAliasSection::new();
    aliases.alias(Alias::CoreInstanceExport {
        instance: 0,
        kind: ExportKind::Func,
        name: "f",
    });
    component.section(&aliases);
    let mut types = ComponentTypeSection::new();
    types
        .function()
        .params([("x", PrimitiveValType::U32)])
        .result(Some(PrimitiveValType::U32.into()));
    component.section(&types);
    let mut canon = CanonicalFunctionSection::new();
    canon.lift(0, 0, []);
    component.section(&canon);
    let mut scorer = ComponentInstanceSection::new();
    scorer.export_items([("score", ComponentExportKind::Func, 0)]);
    component.section(&scorer);
    let mut exports = ComponentExportSection::new();
    exports.export(
        "deepwasm:plugin/scorer@0.1.0",
        ComponentExportKind::Instance,
        0,
        None,
    );
    component.section(&exports);
    component.finish()
}
