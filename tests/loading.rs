use deepwasm_plugins::{Grants, HostInterface, LoadError, World};

use crate::util::{artifacts, engine, plugin};

#[test]
fn every_example_plugin_loads_as_its_world() {
    let expected = [
        (artifacts::GREEDY, World::Sampler),
        (artifacts::TOP_K, World::Sampler),
        (artifacts::WORD_BAN, World::Sampler),
        (artifacts::HOSTILE_SAMPLER, World::Sampler),
        (artifacts::R1_FORMAT, World::Reward),
        (artifacts::MATH_ACCURACY, World::Reward),
        (artifacts::HOSTILE_REWARD, World::Reward),
        (artifacts::CALCULATOR, World::Tool),
        (artifacts::HOSTILE_TOOL, World::Tool),
    ];
    for (path, world) in expected {
        let p = plugin(path);
        assert_eq!(p.world(), world, "{path}");
        let export = p
            .info()
            .exports
            .iter()
            .find(|e| e.name == world.export_name());
        assert!(
            export.is_some(),
            "{path} should export {}",
            world.export_name()
        );
    }
}

#[test]
fn the_exported_functions_are_listed() {
    let p = plugin(artifacts::CALCULATOR);
    let export = &p.info().exports[0];
    assert_eq!(export.name, "deepwasm:plugin/tool-provider@0.1.0");
    assert_eq!(export.functions, ["describe", "call"]);
}

#[test]
fn bytes_that_are_not_wasm_are_refused() {
    let err = engine()
        .load("notes", b"hello world", &Grants::default())
        .unwrap_err();
    assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");
    assert!(
        err.to_string().contains("not a WebAssembly binary"),
        "{err}"
    );
    let err = engine().load("empty", b"", &Grants::default()).unwrap_err();
    assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");
}

#[test]
fn a_core_module_is_refused_with_advice() {
    let module = wat::parse_str("(module (func (export \"f\")))").unwrap();
    let err = engine()
        .load("core", &module, &Grants::default())
        .unwrap_err();
    assert!(matches!(err, LoadError::CoreModule { .. }), "{err}");
    assert!(err.to_string().contains("wasm32-wasip2"), "{err}");
}

#[test]
fn a_truncated_component_is_refused() {
    let bytes = std::fs::read(artifacts::CALCULATOR).unwrap();
    let err = engine()
        .load("truncated", &bytes[..bytes.len() / 2], &Grants::default())
        .unwrap_err();
    assert!(matches!(err, LoadError::Invalid { .. }), "{err}");
}

#[test]
fn a_component_of_no_known_world_is_refused() {
    let component = wat::parse_str("(component)").unwrap();
    let err = engine()
        .load("empty", &component, &Grants::default())
        .unwrap_err();
    assert!(matches!(err, LoadError::NoWorld { .. }), "{err}");
    assert!(err.to_string().contains("exports nothing"), "{err}");

    let other = wat::parse_str(
        r#"(component (instance $i) (export "acme:thing/api@1.0.0" (instance $i)))"#,
    )
    .unwrap();
    let err = engine()
        .load("other", &other, &Grants::default())
        .unwrap_err();
    assert!(err.to_string().contains("acme:thing/api@1.0.0"), "{err}");
}

#[test]
fn a_component_of_two_worlds_is_refused() {
    let two = wat::parse_str(
        r#"(component
            (instance $i)
            (export "deepwasm:plugin/scorer@0.1.0" (instance $i))
            (export "deepwasm:plugin/tool-provider@0.1.0" (instance $i)))"#,
    )
    .unwrap();
    let err = engine().load("two", &two, &Grants::default()).unwrap_err();
    assert!(matches!(err, LoadError::SeveralWorlds { .. }), "{err}");
}

/// A component exporting an (empty) tool-provider and importing `import`.
fn tool_importing(import: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(component
            (import "{import}" (instance))
            (instance $i)
            (export "deepwasm:plugin/tool-provider@0.1.0" (instance $i)))"#
    ))
    .unwrap()
}

#[test]
fn imports_outside_the_world_are_refused() {
    let err = engine()
        .load(
            "sneaky",
            &tool_importing("deepwasm:plugin/inference@0.1.0"),
            &Grants::default(),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::OutsideWorld {
                world: World::Tool,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("it offers log, kv"), "{err}");
}

#[test]
fn imports_the_tenant_was_not_granted_are_refused() {
    let mut grants = Grants::default();
    grants.interfaces.remove(&HostInterface::Kv);
    let err = engine()
        .load(
            "kv-user",
            &tool_importing("deepwasm:plugin/kv@0.1.0"),
            &grants,
        )
        .unwrap_err();
    assert!(matches!(err, LoadError::NotGranted { .. }), "{err}");

    // The real word-ban sampler reads the vocabulary through the tokenizer.
    let bytes = std::fs::read(artifacts::WORD_BAN).unwrap();
    let mut grants = Grants::default();
    grants.interfaces.remove(&HostInterface::Tokenizer);
    let err = engine().load("word-ban", &bytes, &grants).unwrap_err();
    assert!(
        matches!(&err, LoadError::NotGranted { import, .. } if import.starts_with("deepwasm:plugin/tokenizer")),
        "{err}"
    );
    // With the grant it loads.
    engine()
        .load("word-ban", &bytes, &Grants::default())
        .unwrap();
}

#[test]
fn imports_of_another_version_or_unknown_interfaces_are_refused() {
    let err = engine()
        .load(
            "future",
            &tool_importing("deepwasm:plugin/log@0.2.0"),
            &Grants::default(),
        )
        .unwrap_err();
    assert!(matches!(err, LoadError::WrongVersion { .. }), "{err}");

    let err = engine()
        .load(
            "made-up",
            &tool_importing("deepwasm:plugin/filesystem@0.1.0"),
            &Grants::default(),
        )
        .unwrap_err();
    assert!(matches!(err, LoadError::Unknown { .. }), "{err}");

    let http = wat::parse_str(
        r#"(component
            (import "wasi:http/outgoing-handler@0.2.0" (instance (export "handle" (func))))
            (instance $i)
            (export "deepwasm:plugin/tool-provider@0.1.0" (instance $i)))"#,
    )
    .unwrap();
    let err = engine()
        .load("http", &http, &Grants::default())
        .unwrap_err();
    assert!(matches!(err, LoadError::Link { .. }), "{err}");
    assert!(
        err.to_string().contains("wasi:http/outgoing-handler@0.2.0"),
        "{err}"
    );
}

#[test]
fn a_plugin_used_as_another_world_is_refused() {
    let calc = plugin(artifacts::CALCULATOR);
    let err =
        deepwasm_plugins::RewardPlugin::new(calc, crate::util::sandbox(World::Reward, |_| {}))
            .unwrap_err();
    assert!(
        err.to_string()
            .contains("is a tool plugin, not a reward plugin"),
        "{err}"
    );
}

#[test]
fn an_export_with_the_right_name_and_the_wrong_type_is_refused_at_load() {
    // `score` takes a u32 here, not `(list<sample>, string)`.
    let wat = r#"(component
        (core module $m (func (export "f") (param i32)))
        (core instance $i (instantiate $m))
        (func $score (param "x" u32) (canon lift (core func $i "f")))
        (instance $scorer (export "score" (func $score)))
        (export "deepwasm:plugin/scorer@0.1.0" (instance $scorer))
    )"#;
    let bytes = wat::parse_str(wat).unwrap();
    let err = engine()
        .load("mistyped", &bytes, &Grants::default())
        .unwrap_err();
    assert!(matches!(err, LoadError::ExportType { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("mistyped") && msg.contains("deepwasm:plugin/scorer@0.1.0"),
        "{msg}"
    );
}

#[test]
fn a_refused_component_is_never_compiled_or_cached() {
    // Its world and imports are read from its bytes first: nothing lands
    // in the compile cache for a component the host refuses, nor for one
    // whose exports turn out mistyped after compiling.
    let dir = tempfile::tempdir().unwrap();
    let engine = deepwasm_plugins::PluginEngine::new(deepwasm_plugins::EngineConfig {
        cache_dir: Some(dir.path().to_owned()),
        ..Default::default()
    })
    .unwrap();
    let err = engine
        .load(
            "sneaky",
            &tool_importing("deepwasm:plugin/inference@0.1.0"),
            &Grants::default(),
        )
        .unwrap_err();
    assert!(matches!(err, LoadError::OutsideWorld { .. }), "{err}");
    let mistyped = wat::parse_str(
        r#"(component
            (core module $m (func (export "f") (param i32)))
            (core instance $i (instantiate $m))
            (func $score (param "x" u32) (canon lift (core func $i "f")))
            (instance $scorer (export "score" (func $score)))
            (export "deepwasm:plugin/scorer@0.1.0" (instance $scorer))
        )"#,
    )
    .unwrap();
    let err = engine
        .load("mistyped", &mistyped, &Grants::default())
        .unwrap_err();
    assert!(matches!(err, LoadError::ExportType { .. }), "{err}");
    let cached: Vec<_> = std::fs::read_dir(dir.path())
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(cached.is_empty(), "{cached:?}");
    // A good one is cached as before.
    engine
        .load_file(
            std::path::Path::new(artifacts::CALCULATOR),
            &Grants::default(),
        )
        .unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
