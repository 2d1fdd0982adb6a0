//! Building a directory of plugins at once, as a build script does: every
//! plugin of a language under `plugins/<lang>/`, several at a time, each
//! rebuilt only when its inputs change.
//!
//! A component is kept when a stamp beside it matches a hash of everything
//! that went into it: the plugin's files, the shared helpers, the WIT, its
//! world and the toolchain's version. componentize-py and componentize-js
//! take seconds per component, so a build that changed nothing takes none.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{BuildError, Lang, Source, Toolchains, detect_world, files_with_ext, source_files};

/// One plugin to build.
#[derive(Clone, Debug)]
pub struct Job {
    pub lang: Lang,
    /// The output's file stem (`<prefix><directory name>`).
    pub name: String,
    /// The plugin's directory.
    pub dir: PathBuf,
    pub world: &'static str,
}

/// The plugins of `lang` in the subdirectories of `root`, those whose
/// files [`Lang::detect`] reads as `lang`; `prefix` goes before each
/// directory's name to name its component. A missing `root` has none.
pub fn discover(lang: Lang, root: &Path, prefix: &str) -> Result<Vec<Job>, BuildError> {
    let Ok(entries) = fs::read_dir(root) else {
        return Ok(Vec::new());
    };
    let mut jobs = Vec::new();
    for entry in entries {
        let dir = entry.map_err(BuildError::io("cannot list", root))?.path();
        if !dir.is_dir() || Lang::detect(&dir) != Some(lang) {
            continue;
        }
        let stem = dir.file_name().unwrap().to_string_lossy().into_owned();
        jobs.push(Job {
            lang,
            name: format!("{prefix}{stem}"),
            world: detect_world(lang, &dir)?,
            dir,
        });
    }
    jobs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(jobs)
}

/// What every job of a batch shares.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// The `deepwasm:plugin` WIT package.
    pub wit: &'a Path,
    /// The shared helpers of each language that has them (see
    /// [`Source::shared`]).
    pub shared: &'a [(Lang, PathBuf)],
    /// Scratch space; each job works in `<work_dir>/<name>`.
    pub work_dir: &'a Path,
    /// Where the components go, as `<dest>/<name>.wasm`.
    pub dest: &'a Path,
    /// C warnings are errors.
    pub strict: bool,
    /// Jobs run at once.
    pub parallel: usize,
}

impl Batch<'_> {
    fn shared(&self, lang: Lang) -> Option<&Path> {
        self.shared
            .iter()
            .find(|(l, _)| *l == lang)
            .map(|(_, p)| p.as_path())
    }
}

/// Build every job into `<dest>/<name>.wasm`. Every language's toolchain
/// is checked before anything is built, and every failure is reported, not
/// only the first.
pub fn build_all(jobs: &[Job], tools: &Toolchains, batch: &Batch<'_>) -> Result<(), BuildError> {
    let mut identities = Vec::new();
    for lang in Lang::ALL {
        if jobs.iter().any(|j| j.lang == lang) {
            tools.check(lang)?;
            identities.push((lang, tools.identity(lang)));
        }
    }
    fs::create_dir_all(batch.dest).map_err(BuildError::io("cannot create", batch.dest))?;
    let next = AtomicUsize::new(0);
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..batch.parallel.clamp(1, jobs.len().max(1)) {
            s.spawn(|| {
                while let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let identity = &identities.iter().find(|(l, _)| *l == job.lang).unwrap().1;
                    if let Err(e) = build_one(job, tools, batch, identity) {
                        errors.lock().unwrap().push(format!(
                            "{} ({}): {e}",
                            job.name,
                            job.dir.display()
                        ));
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(BuildError::Batch(errors.join("\n\n")))
    }
}

/// A hash of everything a job's component is made from.
fn stamp(job: &Job, batch: &Batch<'_>, identity: &str) -> Result<String, BuildError> {
    let mut hasher = DefaultHasher::new();
    identity.hash(&mut hasher);
    job.world.hash(&mut hasher);
    batch.strict.hash(&mut hasher);
    let mut inputs: Vec<(PathBuf, PathBuf)> = Vec::new();
    for file in source_files(&job.dir)? {
        inputs.push((job.dir.clone(), file));
    }
    if let Some(shared) = batch.shared(job.lang) {
        // The helpers are the files beside the plugin directories.
        for entry in fs::read_dir(shared).map_err(BuildError::io("cannot list", shared))? {
            let path = entry.map_err(BuildError::io("cannot list", shared))?.path();
            if path.is_file() {
                inputs.push((shared.to_owned(), path));
            }
        }
    }
    for file in files_with_ext(batch.wit, "wit") {
        inputs.push((batch.wit.to_owned(), file));
    }
    inputs.sort();
    for (base, file) in &inputs {
        // Relative names: a checkout that moves keeps its stamps.
        file.strip_prefix(base).unwrap_or(file).hash(&mut hasher);
        fs::read(file)
            .map_err(BuildError::io("cannot read", file))?
            .hash(&mut hasher);
    }
    Ok(format!("{:016x}", hasher.finish()))
}

fn build_one(
    job: &Job,
    tools: &Toolchains,
    batch: &Batch<'_>,
    identity: &str,
) -> Result<(), BuildError> {
    let out = batch.dest.join(format!("{}.wasm", job.name));
    let stamp_path = batch.dest.join(format!(".{}.stamp", job.name));
    let stamp = stamp(job, batch, identity)?;
    if out.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(());
    }
    let bytes = crate::build(
        &Source {
            lang: job.lang,
            dir: &job.dir,
            world: job.world,
            wit: batch.wit,
            shared: batch.shared(job.lang),
            work_dir: &batch.work_dir.join(&job.name),
            strict: batch.strict,
        },
        tools,
    )?;
    // Written aside and renamed, so a reader never sees half a component.
    let tmp = batch.dest.join(format!(".{}.wasm.tmp", job.name));
    fs::write(&tmp, bytes).map_err(BuildError::io("cannot write", &tmp))?;
    fs::rename(&tmp, &out).map_err(BuildError::io("cannot rename", &tmp))?;
    fs::write(&stamp_path, stamp).map_err(BuildError::io("cannot write", &stamp_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_plugins_by_language_and_world() {
        let root =
            std::env::temp_dir().join(format!("guest-build-discover-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for (dir, file, text) in [
            ("b-tool", "app.py", "class ToolProvider:\n    pass\n"),
            ("a-reward", "app.py", "class Scorer(object):\n    pass\n"),
            ("js-one", "app.js", "export const scorer = {};\n"),
            ("notes", "README.md", "not a plugin"),
        ] {
            fs::create_dir_all(root.join(dir)).unwrap();
            fs::write(root.join(dir).join(file), text).unwrap();
        }
        // A helper beside the plugin directories is not a plugin.
        fs::write(root.join("helper.py"), "class Scorer:\n    pass\n").unwrap();
        let jobs = discover(Lang::Python, &root, "python-").unwrap();
        let found: Vec<(&str, &str)> = jobs.iter().map(|j| (j.name.as_str(), j.world)).collect();
        assert_eq!(
            found,
            [("python-a-reward", "reward"), ("python-b-tool", "tool")]
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
