//! Safe extraction of zip and tar.gz archives.
//!
//! Every write goes through a `cap_std::fs::Dir` rooted at the work dir, which refuses any path
//! that resolves outside it, symlinks included. On top of that, entries with absolute paths or
//! `..` are rejected outright (zip-slip), symlinks are created last and only if they resolve
//! inside the work dir, and total size and entry count are capped (zip bombs).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, Permissions};

use crate::error::{Result, RunnerError};

pub use cliscale_core::source::ArchiveFormat;

/// Caps on what one archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct ExtractLimits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

fn unsafe_entry(path: &Path, why: &str) -> RunnerError {
    RunnerError::UnsafeArchive(format!("entry {:?} {why}", path.display().to_string()))
}

/// Turns an archive entry's path into a clean relative path, refusing anything that could
/// land outside the root. Returns `None` for the root itself (`./`).
pub fn safe_relative_path(raw: &Path) -> Result<Option<PathBuf>> {
    let mut clean = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_entry(raw, "climbs out with '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_entry(raw, "has an absolute path"));
            }
        }
    }
    Ok((!clean.as_os_str().is_empty()).then_some(clean))
}

/// True when `path` lies under `prefix` or is one of its ancestors, ignoring the first
/// component (the top directory of a GitHub tarball). An empty prefix keeps everything.
fn wanted(path: &Path, prefix: &[String]) -> bool {
    let rest: Vec<_> = path.components().skip(1).collect();
    rest.iter().zip(prefix).all(|(c, p)| c.as_os_str() == p.as_str())
}

struct Extractor {
    root: Dir,
    limits: ExtractLimits,
    bytes: u64,
    entries: u64,
    symlinks: Vec<(PathBuf, PathBuf)>,
    /// Regular files written so far: the only things a hard link may name.
    files: HashSet<PathBuf>,
}

impl Extractor {
    fn count_entry(&mut self) -> Result<()> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(RunnerError::UnsafeArchive(format!(
                "more than {} entries",
                self.limits.max_entries
            )));
        }
        Ok(())
    }

    fn dir(&self, path: &Path) -> Result<()> {
        self.root.create_dir_all(path).map_err(|e| io_in(path, e))
    }

    fn file(&mut self, path: &Path, mut body: impl Read, mode: Option<u32>) -> Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.dir(parent)?;
        }
        let mut out = self.root.create(path).map_err(|e| io_in(path, e))?;
        let room = self.limits.max_bytes - self.bytes;
        // Read one byte past the room so an oversize entry is detected, not truncated.
        let written = std::io::copy(&mut (&mut body).take(room + 1), &mut out)
            .map_err(|e| RunnerError::Extract(format!("{}: {e}", path.display())))?;
        if written > room {
            return Err(RunnerError::UnsafeArchive(format!(
                "unpacks to more than {} bytes",
                self.limits.max_bytes
            )));
        }
        self.bytes += written;
        self.files.insert(path.to_owned());
        out.flush().map_err(|e| io_in(path, e))?;
        if let Some(mode) = mode {
            use cap_std::fs::PermissionsExt;
            // Keep the executable bits; never set-id or sticky bits.
            let perm = Permissions::from_mode(mode & 0o777);
            self.root.set_permissions(path, perm).map_err(|e| io_in(path, e))?;
        }
        Ok(())
    }

    fn symlink(&mut self, link: PathBuf, target: PathBuf) -> Result<()> {
        if target.is_absolute() {
            return Err(unsafe_entry(&link, "is a symlink with an absolute target"));
        }
        self.symlinks.push((link, target));
        Ok(())
    }

    /// Creates the deferred symlinks, then checks each resolves inside the root.
    fn finish(self) -> Result<()> {
        for (link, target) in &self.symlinks {
            if let Some(parent) = link.parent().filter(|p| !p.as_os_str().is_empty()) {
                self.dir(parent)?;
            }
            self.root.symlink(target, link).map_err(|e| io_in(link, e))?;
        }
        for (link, target) in &self.symlinks {
            let escapes = match self.root.canonicalize(link) {
                Ok(_) => false,
                // A dangling link is harmless only if its target stays inside lexically.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let base = link.parent().unwrap_or(Path::new(""));
                    safe_relative_path(&base.join(target)).is_err()
                }
                Err(_) => true,
            };
            if escapes {
                let _ = self.root.remove_file(link);
                return Err(unsafe_entry(link, "is a symlink that points outside the work dir"));
            }
        }
        Ok(())
    }
}

fn io_in(path: &Path, e: std::io::Error) -> RunnerError {
    RunnerError::Extract(format!("{}: {e}", path.display()))
}

/// Unpacks `file` into `dest`. With a non-empty `keep_prefix`, only entries under
/// `TOP/keep_prefix` are written (TOP being the archive's first path component).
pub fn extract_archive(
    file: std::fs::File,
    format: ArchiveFormat,
    dest: &Path,
    limits: ExtractLimits,
    keep_prefix: &[String],
) -> Result<()> {
    let root = Dir::open_ambient_dir(dest, ambient_authority())
        .map_err(|e| RunnerError::io(format!("opening {}", dest.display()), e))?;
    let mut ex = Extractor {
        root,
        limits,
        bytes: 0,
        entries: 0,
        symlinks: Vec::new(),
        files: HashSet::new(),
    };
    match format {
        ArchiveFormat::TarGz => extract_tar(file, &mut ex, keep_prefix)?,
        ArchiveFormat::Zip => extract_zip(file, &mut ex, keep_prefix)?,
    }
    ex.finish()
}

fn extract_tar(file: std::fs::File, ex: &mut Extractor, keep: &[String]) -> Result<()> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let entries = archive.entries().map_err(|e| RunnerError::Extract(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| RunnerError::Extract(e.to_string()))?;
        let raw = entry.path().map_err(|e| RunnerError::Extract(e.to_string()))?.into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        ex.count_entry()?;
        let Some(path) = safe_relative_path(&raw)? else {
            continue;
        };
        if !wanted(&path, keep) {
            continue;
        }
        match kind {
            tar::EntryType::Directory => ex.dir(&path)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mode = entry.header().mode().ok();
                ex.file(&path, &mut entry, mode)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| RunnerError::Extract(e.to_string()))?
                    .ok_or_else(|| unsafe_entry(&path, "is a symlink without a target"))?
                    .into_owned();
                ex.symlink(path, target)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| RunnerError::Extract(e.to_string()))?
                    .ok_or_else(|| unsafe_entry(&path, "is a hard link without a target"))?;
                let Some(target) = safe_relative_path(&target)? else {
                    return Err(unsafe_entry(&path, "is a hard link to the root"));
                };
                // As tar itself writes them: a hard link names an earlier file of the archive.
                // That also keeps it off anything reached through a (not yet created) symlink.
                if !ex.files.contains(&target) {
                    let why = format!(
                        "is a hard link to {}, which is not an earlier file of the archive",
                        target.display()
                    );
                    return Err(unsafe_entry(&path, &why));
                }
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    ex.dir(parent)?;
                }
                ex.root.hard_link(&target, &ex.root, &path).map_err(|e| io_in(&path, e))?;
                ex.files.insert(path);
            }
            // Devices, FIFOs and the like have no place in source code.
            other => {
                tracing::warn!(path = %path.display(), kind = ?other, "skipping special archive entry")
            }
        }
    }
    Ok(())
}

fn extract_zip(file: std::fs::File, ex: &mut Extractor, keep: &[String]) -> Result<()> {
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| RunnerError::Extract(e.to_string()))?;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| RunnerError::Extract(e.to_string()))?;
        ex.count_entry()?;
        let raw = PathBuf::from(
            entry.name().map_err(|e| RunnerError::Extract(e.to_string()))?.into_owned(),
        );
        let Some(path) = safe_relative_path(&raw)? else {
            continue;
        };
        if !wanted(&path, keep) {
            continue;
        }
        if entry.is_dir() {
            ex.dir(&path)?;
        } else if entry.is_symlink() {
            let mut target = String::new();
            (&mut entry)
                .take(4096)
                .read_to_string(&mut target)
                .map_err(|e| RunnerError::Extract(e.to_string()))?;
            ex.symlink(path, PathBuf::from(target))?;
        } else {
            let mode = entry.unix_mode();
            ex.file(&path, &mut entry, mode)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_cleaned_or_refused() {
        let ok = |s: &str| safe_relative_path(Path::new(s)).unwrap();
        assert_eq!(ok("a/./b/c.txt"), Some(PathBuf::from("a/b/c.txt")));
        assert_eq!(ok("./"), None);
        for bad in ["../x", "a/../../x", "/etc/passwd", "a/b/../../../x"] {
            assert!(safe_relative_path(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_select_a_subtree_and_its_ancestors() {
        let keep = vec!["app".to_string(), "src".to_string()];
        assert!(wanted(Path::new("repo-main/app/src/main.rs"), &keep));
        assert!(wanted(Path::new("repo-main/app"), &keep));
        assert!(wanted(Path::new("repo-main"), &keep));
        assert!(!wanted(Path::new("repo-main/docs/readme.md"), &keep));
        assert!(!wanted(Path::new("repo-main/app/test/x"), &keep));
        assert!(wanted(Path::new("anything/at/all"), &[]));
    }
}
