//! C plugins: bindings, compilation and the component, with no tool beyond
//! clang.
//!
//! 1. `wit-bindgen-c` (the library behind `wit-bindgen c`) writes
//!    `deepwasm.h` and `deepwasm.c` for the plugin's world, the world renamed
//!    to `deepwasm` (as `wit-bindgen c --rename-world deepwasm` does), so
//!    every world's bindings have the same file and type names.
//! 2. clang with wasi-libc compiles the plugin's `.c` files and the bindings
//!    into a core module, as a reactor (no `main`; wasi-libc's constructors
//!    run before the first export call).
//! 3. `wit-component` embeds the world's type information in the module and
//!    wraps it, with the WASI preview1 reactor adapter for wasi-libc's
//!    preview1 imports, into a component.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use wit_bindgen_core::Files;
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::{Resolve, WorldId};

use crate::{BuildError, Source, Toolchains, files_with_ext, run};

/// Load the WIT package in `wit` and find `world` in it.
fn world(wit: &Path, world: &str) -> Result<(Resolve, WorldId), BuildError> {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve.push_dir(wit).map_err(|e| {
        BuildError::Component(format!("cannot read the WIT in {}: {e:#}", wit.display()))
    })?;
    let id = resolve.select_world(&[pkg], Some(world)).map_err(|e| {
        BuildError::Component(format!("no world `{world}` in {}: {e:#}", wit.display()))
    })?;
    Ok((resolve, id))
}

/// Write the C bindings of `world_name` into `dir`; returns the `.c` files.
pub fn bindings(wit: &Path, world_name: &str, dir: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let (mut resolve, id) = world(wit, world_name)?;
    let opts = wit_bindgen_c::Opts {
        // The type information is embedded by wit-component below, not
        // linked from an object file.
        no_object_file: true,
        rename_world: Some("deepwasm".into()),
        ..Default::default()
    };
    let mut files = Files::default();
    opts.build()
        .generate(&mut resolve, id, &mut files)
        .map_err(|e| {
            BuildError::Component(format!("generating C bindings for `{world_name}`: {e:#}"))
        })?;
    // The generated C refers to a symbol of the object file it was told not
    // to write.
    files.push(
        "component_type.c",
        b"/* Stands in for the `*_component_type.o` that wit-bindgen would write. */\n\
          void __component_type_object_force_link_deepwasm(void) {}\n",
    );
    fs::create_dir_all(dir).map_err(BuildError::io("cannot create", dir))?;
    let mut sources = Vec::new();
    for (name, contents) in files.iter() {
        let path = dir.join(name);
        // Rewrite only on change, so clang's inputs keep their times.
        if fs::read(&path).ok().as_deref() != Some(contents) {
            fs::write(&path, contents).map_err(BuildError::io("cannot write", &path))?;
        }
        if name.ends_with(".c") {
            sources.push(path);
        }
    }
    Ok(sources)
}

/// Build the C plugin `src` into component bytes.
pub fn build(src: &Source<'_>, tools: &Toolchains) -> Result<Vec<u8>, BuildError> {
    let gen_dir = src.work_dir.join("bindings");
    let mut sources = files_with_ext(src.dir, "c");
    sources.extend(bindings(src.wit, src.world, &gen_dir)?);

    let core = src.work_dir.join("core.wasm");
    let mut cmd = Command::new(tools.clang.as_ref().expect("checked"));
    cmd.arg("--target=wasm32-wasi")
        .arg(format!("--sysroot={}", tools.sysroot.display()))
        .args(["-O2", "-mexec-model=reactor", "-fuse-ld=lld", "-std=c11"])
        // Debian's wasi-libc carries DWARF; keep the name section only.
        .arg("-Wl,--strip-debug")
        .args(["-Wall", "-Wextra", "-Wno-unused-parameter"]);
    if src.strict {
        cmd.arg("-Werror");
    }
    cmd.arg("-I").arg(src.dir);
    if let Some(shared) = src.shared {
        cmd.arg("-I").arg(shared);
    }
    cmd.arg("-I")
        .arg(&gen_dir)
        .args(&sources)
        .arg("-o")
        .arg(&core);
    run(cmd)?;

    let mut module = fs::read(&core).map_err(BuildError::io("cannot read", &core))?;
    let (resolve, id) = world(src.wit, src.world)?;
    wit_component::embed_component_metadata(&mut module, &resolve, id, StringEncoding::UTF8)
        .map_err(|e| BuildError::Component(format!("embedding the component type: {e:#}")))?;
    ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .and_then(|enc| {
            enc.adapter(
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|mut enc| enc.encode())
        .map_err(|e| {
            BuildError::Component(format!(
                "making a component of the core module {}: {e:#}",
                core.display()
            ))
        })
}
