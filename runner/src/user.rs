//! The user the session's install step and command run as, when it is not the runner's own:
//! `cliscale up` running as root gives every session a user of its own (docs/security.md).
//! The runner stays root; the session's processes get no supplementary groups, and the work
//! dir is handed to them.

use std::path::Path;

use nix::unistd::{Gid, Uid};

use crate::error::{Result, RunnerError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionUser {
    pub uid: u32,
    pub gid: u32,
}

impl SessionUser {
    pub fn from_args(uid: Option<u32>, gid: Option<u32>) -> Option<Self> {
        Some(Self { uid: uid?, gid: gid? })
    }

    /// Makes `root` and everything under it the session user's, without following symlinks.
    pub fn give_tree(self, root: &Path) -> Result<()> {
        let (uid, gid) = (Some(Uid::from_raw(self.uid)), Some(Gid::from_raw(self.gid)));
        let mut pending = vec![root.to_path_buf()];
        while let Some(path) = pending.pop() {
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|e| RunnerError::io(format!("reading {}", path.display()), e))?;
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &path,
                uid,
                gid,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| RunnerError::io(format!("handing {} over", path.display()), e.into()))?;
            if meta.is_dir() {
                for entry in std::fs::read_dir(&path)
                    .map_err(|e| RunnerError::io(format!("listing {}", path.display()), e))?
                {
                    let entry = entry
                        .map_err(|e| RunnerError::io(format!("listing {}", path.display()), e))?;
                    pending.push(entry.path());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ids_or_none() {
        assert_eq!(SessionUser::from_args(Some(5), Some(6)), Some(SessionUser { uid: 5, gid: 6 }));
        assert_eq!(SessionUser::from_args(Some(5), None), None);
        assert_eq!(SessionUser::from_args(None, Some(6)), None);
    }
}
