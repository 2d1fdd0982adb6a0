//! Whatever bytes a tenant uploads as a plugin, loading gives a plugin or a
//! `LoadError` naming it: never a panic. Random bytes, random bytes behind
//! a component header, and real components overwritten, cut short and
//! spliced.

use std::sync::OnceLock;

use deepwasm_plugins::{EngineConfig, Grants, PluginEngine};
use proptest::prelude::*;
use proptest::sample::{Index, select};

use crate::util::artifacts;

/// An engine without a compile cache: the mutants that compile stay in
/// memory, not in the shared cache directory.
fn engine() -> &'static PluginEngine {
    static ENGINE: OnceLock<PluginEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PluginEngine::new(EngineConfig::default()).unwrap())
}

/// The preamble of a component: the Wasm magic, then version 0x0d, layer 1.
const COMPONENT_HEADER: &[u8] = b"\0asm\x0d\x00\x01\x00";

/// The name every loaded component gets: errors must say it.
const NAME: &str = "fuzzed";

/// Components to mutate: two real plugins (a Rust sampler and a C reward,
/// which load) and two small ones that reach the compiler and the linker
/// (an import the world offers, an export of the wrong type).
fn originals() -> &'static [Vec<u8>] {
    static ORIGINALS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    ORIGINALS.get_or_init(|| {
        vec![
            std::fs::read(artifacts::GREEDY).unwrap(),
            std::fs::read(artifacts::C_R1_FORMAT).unwrap(),
            wat::parse_str(
                r#"(component
                    (import "deepwasm:plugin/log@0.1.0" (instance))
                    (instance $i)
                    (export "deepwasm:plugin/tool-provider@0.1.0" (instance $i)))"#,
            )
            .unwrap(),
            wat::parse_str(
                r#"(component
                    (core module $m
                        (memory (export "memory") 1)
                        (func (export "f") (param i32)))
                    (core instance $i (instantiate $m))
                    (func $score (param "x" u32) (canon lift (core func $i "f")))
                    (instance $scorer (export "score" (func $score)))
                    (export "deepwasm:plugin/scorer@0.1.0" (instance $scorer)))"#,
            )
            .unwrap(),
        ]
    })
}

/// What may follow a component header: any bytes, or sections of any id
/// whose lengths are mostly true (so that the parser reads into them) and
/// sometimes any number.
fn component_body() -> impl Strategy<Value = Vec<u8>> {
    let length = prop_oneof![
        4 => Just(None),
        1 => prop_oneof![0u64..=16, Just(u32::MAX.into()), Just(u64::MAX), any::<u64>()]
            .prop_map(Some),
    ];
    let section = (0u8..=13, length, prop::collection::vec(any::<u8>(), 0..64));
    let sections = prop::collection::vec(section, 0..8).prop_map(|sections| {
        let mut out = Vec::new();
        for (id, length, payload) in sections {
            out.push(id);
            // A length as Wasm writes it (unsigned LEB128), true or not.
            wasm_encoder::Encode::encode(&length.unwrap_or(payload.len() as u64), &mut out);
            out.extend(payload);
        }
        out
    });
    prop_oneof![prop::collection::vec(any::<u8>(), 0..512), sections]
}

fn grants() -> impl Strategy<Value = Grants> {
    select(vec![Grants::default(), Grants::none()])
}

/// Load `bytes`: a plugin, or an error that names it. Returns whether it
/// loaded.
fn load(bytes: &[u8], grants: &Grants) -> Result<bool, TestCaseError> {
    match engine().load(NAME, bytes, grants) {
        Ok(_) => Ok(true),
        Err(e) => {
            let message = e.to_string();
            prop_assert!(message.contains(NAME), "{message}");
            Ok(false)
        }
    }
}

/// One change to a component's bytes.
#[derive(Clone, Debug)]
enum Edit {
    /// Overwrite a byte.
    Set(Index, u8),
    /// Cut the component short.
    Truncate(Index),
    /// Copy `len` bytes from one place over another.
    Splice { from: Index, to: Index, len: usize },
    /// Insert bytes.
    Insert(Index, Vec<u8>),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        6 => (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        2 => (any::<Index>(), any::<Index>(), 1usize..256)
            .prop_map(|(from, to, len)| Edit::Splice { from, to, len }),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
    ];
    prop::collection::vec(edit, 1..5)
}

fn apply(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for edit in edits {
        let at = |i: &Index| i.index(bytes.len().max(1)).min(bytes.len());
        match edit {
            Edit::Set(i, b) => {
                if !bytes.is_empty() {
                    let at = at(i);
                    bytes[at] = *b;
                }
            }
            Edit::Truncate(i) => bytes.truncate(at(i)),
            Edit::Splice { from, to, len } => {
                let (from, to) = (at(from), at(to));
                let len = (*len).min(bytes.len() - from).min(bytes.len() - to);
                bytes.copy_within(from..from + len, to);
            }
            Edit::Insert(i, new) => {
                let at = at(i);
                bytes.splice(at..at, new.iter().copied());
            }
        }
    }
}

#[test]
fn the_originals_load_or_reach_the_checks_after_compiling() {
    let results: Vec<String> = originals()
        .iter()
        .map(
            |bytes| match engine().load(NAME, bytes, &Grants::default()) {
                Ok(plugin) => format!("a {} plugin", plugin.world()),
                Err(e) => e.to_string(),
            },
        )
        .collect();
    assert_eq!(results[..2], ["a sampler plugin", "a reward plugin"]);
    assert!(results[2].contains("tool-provider"), "{}", results[2]);
    assert!(results[3].contains("scorer"), "{}", results[3]);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // A failure is kept as a regular test, not in a file beside the source.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_bytes_are_refused(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        grants in grants(),
    ) {
        prop_assert!(!load(&bytes, &grants)?);
    }

    #[test]
    fn anything_after_a_component_header_is_refused(
        bytes in component_body(),
        grants in grants(),
    ) {
        let mut component = COMPONENT_HEADER.to_vec();
        component.extend(bytes);
        prop_assert!(!load(&component, &grants)?);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Mutants that still parse are compiled: milliseconds each.
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn components_overwritten_cut_short_or_spliced(
        original in any::<Index>(),
        edits in edits(),
        grants in grants(),
    ) {
        let originals = originals();
        let mut bytes = originals[original.index(originals.len())].clone();
        apply(&mut bytes, &edits);
        load(&bytes, &grants)?;
    }
}
