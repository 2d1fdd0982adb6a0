use deepwasm_plugins::{CompileSource, EngineConfig, Grants, PluginEngine};

use crate::util::artifacts;

fn engine(dir: &std::path::Path) -> PluginEngine {
    PluginEngine::new(EngineConfig {
        cache_dir: Some(dir.to_owned()),
        ..EngineConfig::default()
    })
    .unwrap()
}

#[test]
fn compiled_components_are_reused_from_memory_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(artifacts::CALCULATOR).unwrap();

    let first = engine(dir.path());
    let p = first
        .load("calculator", &bytes, &Grants::default())
        .unwrap();
    assert_eq!(p.info().compiled, CompileSource::Compiled);
    let p = first
        .load("calculator", &bytes, &Grants::default())
        .unwrap();
    assert_eq!(p.info().compiled, CompileSource::Memory);

    // A new process (here: a new engine) loads the compiled form from disk.
    let second = engine(dir.path());
    let p = second
        .load("calculator", &bytes, &Grants::default())
        .unwrap();
    assert_eq!(p.info().compiled, CompileSource::DiskCache);
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(
        entries.len(),
        1,
        "one entry, no temporary files left behind"
    );
}

#[test]
fn a_corrupt_cache_entry_is_replaced_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(artifacts::CALCULATOR).unwrap();
    engine(dir.path())
        .load("calculator", &bytes, &Grants::default())
        .unwrap();
    let entry = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let good = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &good[..good.len() / 3]).unwrap();

    let p = engine(dir.path())
        .load("calculator", &bytes, &Grants::default())
        .unwrap();
    assert_eq!(p.info().compiled, CompileSource::Compiled);
    let tool = deepwasm_plugins::ToolPlugin::new(
        p,
        crate::util::sandbox(deepwasm_plugins::World::Tool, |_| {}),
    )
    .unwrap();
    assert_eq!(tool.describe().unwrap()[0].name, "calculate");
    assert_eq!(
        std::fs::read(&entry).unwrap().len(),
        good.len(),
        "the entry was rewritten whole"
    );
}

#[test]
fn partial_files_a_crash_left_are_swept_once_old() {
    use deepwasm_plugins::{PARTIAL_MAX_AGE, PARTIAL_PREFIX, sweep_partial, write_atomically};
    let dir = tempfile::tempdir().unwrap();
    write_atomically(&dir.path().join("whole.cwasm"), b"whole").unwrap();
    let old = dir.path().join(format!("{PARTIAL_PREFIX}old"));
    let young = dir.path().join(format!("{PARTIAL_PREFIX}young"));
    for p in [&old, &young] {
        std::fs::write(p, b"half").unwrap();
    }
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - PARTIAL_MAX_AGE * 2)
        .unwrap();
    assert_eq!(sweep_partial(dir.path()), 1);
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [format!("{PARTIAL_PREFIX}young"), "whole.cwasm".into()]
    );
}
