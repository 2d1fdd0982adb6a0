//! Properties of loading a model from broken or hostile files: GGUF files
//! and Hugging Face directories whose headers, counts, lengths, shapes and
//! offsets say anything. Each loads or gives a `ModelError` naming the
//! file; none panics, and none makes an allocation sized by a header
//! rather than by the bytes that are there.

mod gguf;
mod safetensors;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use proptest::prelude::*;
use proptest::sample::{Index, select};

use crate::{LoadOptions, load};

/// The largest single allocation loading a file of a few kilobytes may
/// make. Tokenizer regexes, tables and dequantized weights of the tiny
/// models here stay far below it; a count or length taken from a header
/// on trust goes far above it.
const MAX_ALLOCATION: usize = 64 << 20;

/// This test binary's allocator: the system's, noting the largest single
/// request made on a thread inside [`watching`]. A request the system
/// would grant lazily, leaving the kernel to kill the process once its
/// pages are touched, shows up here too.
struct Watcher;

thread_local! {
    /// The largest request so far on this thread, while watching.
    static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
}

fn note(size: usize) {
    // `try_with`: the slot is gone while the thread exits.
    let _ = LARGEST.try_with(|largest| {
        if let Some(max) = largest.get()
            && size > max
        {
            largest.set(Some(size));
        }
    });
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Watcher {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static WATCHER: Watcher = Watcher;

/// Run `f`; returns its result and the largest single allocation it made
/// on this thread.
fn watching<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|largest| largest.set(Some(0)));
    let out = f();
    let largest = LARGEST.with(|largest| largest.replace(None)).unwrap_or(0);
    (out, largest)
}

/// Load `path` as the server would, and check what every load of a broken
/// file must give: within the allocation bound, and an error that names
/// the file (or directory) it is about. Returns whether it loaded.
fn load_checked(path: &Path) -> Result<bool, TestCaseError> {
    let (result, largest) = watching(|| load(path, &LoadOptions::default()));
    prop_assert!(
        largest <= MAX_ALLOCATION,
        "loading asked for {largest} bytes at once ({:?})",
        result.as_ref().err().map(ToString::to_string)
    );
    if let Err(e) = &result {
        let message = e.to_string();
        let name = path.file_name().unwrap().to_string_lossy();
        prop_assert!(message.contains(&*name), "{message}");
    }
    Ok(result.is_ok())
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // A failure is kept as a regular test, not in a file beside the source.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Numbers a header field may hold: small ones, the edges of each integer
/// width, and the powers of two that make sizes overflow.
fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..=64,
        2 => select(vec![
            u8::MAX.into(),
            u16::MAX.into(),
            1 << 31,
            u32::MAX.into(),
            1 << 32,
            1 << 40,
            1 << 62,
            i64::MAX as u64,
            u64::MAX,
        ]),
        1 => (0u32..64).prop_map(|k| 1u64 << k),
        1 => any::<u64>(),
    ]
}

/// One change to a file's bytes.
#[derive(Clone, Debug)]
enum Edit {
    /// Overwrite a byte.
    Set(Index, u8),
    /// Cut the file short.
    Truncate(Index),
    /// Copy `len` bytes from one place over another.
    Splice { from: Index, to: Index, len: usize },
    /// Insert bytes.
    Insert(Index, Vec<u8>),
}

/// A few changes, each flagged to stay within a file's header (see
/// [`apply`]) or to go anywhere.
fn edits() -> impl Strategy<Value = Vec<(bool, Edit)>> {
    let edit = prop_oneof![
        6 => (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        1 => (any::<Index>(), any::<Index>(), 1usize..64)
            .prop_map(|(from, to, len)| Edit::Splice { from, to, len }),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
    ];
    prop::collection::vec((any::<bool>(), edit), 1..6)
}

/// Apply `edits` to `bytes`; the flagged ones land in the first `focus`
/// bytes.
fn apply(bytes: &mut Vec<u8>, focus: usize, edits: &[(bool, Edit)]) {
    for (in_focus, edit) in edits {
        let span = if *in_focus {
            focus.min(bytes.len())
        } else {
            bytes.len()
        };
        let at = |i: &Index| if span == 0 { 0 } else { i.index(span) };
        match edit {
            Edit::Set(i, b) => {
                if span > 0 {
                    bytes[at(i)] = *b;
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
