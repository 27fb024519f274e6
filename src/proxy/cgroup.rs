//! The process's memory limit, as its cgroup sets it (what a container's
//! `resources.limits.memory` becomes), for `--max-heap P%`.
//!
//! - cgroup v2: the `0::/PATH` line of `/proc/self/cgroup` names the group; its
//!   `memory.max` under `/sys/fs/cgroup`, and those of its ancestors (a parent's limit
//!   bounds its children), `max` meaning none.
//! - cgroup v1: the line whose controllers include `memory`; `memory.limit_in_bytes`
//!   under `/sys/fs/cgroup/memory`, with the same walk up, a value near 2^63 meaning none.
//!
//! A container with its own cgroup namespace sees a path that is not present under the
//! mount (the mount's root is its own group): then the mount root's file is read.
//! The smallest limit found wins.

use std::fmt;
use std::path::{Path, PathBuf};

/// A memory limit and the file that set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub file: PathBuf,
}

/// No limit was found; what each file consulted said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoMemoryLimit {
    pub read: Vec<(PathBuf, String)>,
}

impl fmt::Display for NoMemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no cgroup memory limit found (")?;
        for (i, (path, what)) in self.read.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{}: {what}", path.display())?;
        }
        write!(f, ")")
    }
}

impl std::error::Error for NoMemoryLimit {}

/// v1 reports "no limit" as the largest page-aligned value below 2^63; anything at or
/// above 2^62 (4 EiB) is taken as that.
const V1_UNLIMITED: u64 = 1 << 62;

/// The smallest memory limit of this process's cgroups, read under `root` (`/` but in
/// tests).
pub fn memory_limit(root: &Path) -> Result<MemoryLimit, NoMemoryLimit> {
    let mut read = Vec::new();
    let mut best: Option<MemoryLimit> = None;
    let self_cgroup = root.join("proc/self/cgroup");
    let text = match std::fs::read_to_string(&self_cgroup) {
        Ok(t) => t,
        Err(e) => {
            read.push((self_cgroup, e.to_string()));
            return Err(NoMemoryLimit { read });
        }
    };
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (mount, file) = if id == "0" && controllers.is_empty() {
            (root.join("sys/fs/cgroup"), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("sys/fs/cgroup/memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        for dir in groups(&mount, path) {
            let f = dir.join(file);
            let value = match std::fs::read_to_string(&f) {
                Ok(v) => v,
                Err(e) => {
                    read.push((f, e.to_string()));
                    continue;
                }
            };
            let value = value.trim();
            let limit = match value.parse::<u64>() {
                Ok(b) if file == "memory.limit_in_bytes" && b >= V1_UNLIMITED => None,
                Ok(b) => Some(b),
                Err(_) if value == "max" => None,
                Err(_) => {
                    read.push((f, format!("not a size: {value:?}")));
                    continue;
                }
            };
            match limit {
                Some(bytes) => {
                    read.push((f.clone(), format!("{bytes}")));
                    if best.as_ref().is_none_or(|b| bytes < b.bytes) {
                        best = Some(MemoryLimit { bytes, file: f });
                    }
                }
                None => read.push((f, format!("no limit ({value})"))),
            }
        }
    }
    best.ok_or(NoMemoryLimit { read })
}

/// The group `path` under `mount` and its ancestors up to the mount's root; the root
/// alone when the group is not present there (a cgroup namespace's view).
fn groups(mount: &Path, path: &str) -> Vec<PathBuf> {
    let rel = path.trim_start_matches('/');
    let own = mount.join(rel);
    if rel.is_empty() || rel.split('/').any(|c| c == "..") || !own.is_dir() {
        return vec![mount.to_path_buf()];
    }
    let mut out = Vec::new();
    let mut p = PathBuf::from(rel);
    loop {
        out.push(mount.join(&p));
        if !p.pop() {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    const V1_NONE: &str = "9223372036854771712\n";

    /// A cgroup v1 host: the memory line names the group.
    fn v1_root(group: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "proc/self/cgroup",
            &format!("12:pids:/x\n4:memory:{group}\n1:name=systemd:/\n0::/\n"),
        );
        write(
            d.path(),
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            V1_NONE,
        );
        d
    }

    #[test]
    fn v1_the_group_limit() {
        let d = v1_root("/kubepods/pod1/c1");
        write(
            d.path(),
            "sys/fs/cgroup/memory/kubepods/memory.limit_in_bytes",
            V1_NONE,
        );
        write(
            d.path(),
            "sys/fs/cgroup/memory/kubepods/pod1/memory.limit_in_bytes",
            V1_NONE,
        );
        write(
            d.path(),
            "sys/fs/cgroup/memory/kubepods/pod1/c1/memory.limit_in_bytes",
            "1073741824\n",
        );
        let l = memory_limit(d.path()).unwrap();
        assert_eq!(l.bytes, 1 << 30);
        assert!(
            l.file
                .ends_with("sys/fs/cgroup/memory/kubepods/pod1/c1/memory.limit_in_bytes")
        );
    }

    #[test]
    fn v1_the_smallest_ancestor_limit() {
        let d = v1_root("/a/b");
        write(
            d.path(),
            "sys/fs/cgroup/memory/a/memory.limit_in_bytes",
            "536870912\n",
        );
        write(
            d.path(),
            "sys/fs/cgroup/memory/a/b/memory.limit_in_bytes",
            "1073741824\n",
        );
        let l = memory_limit(d.path()).unwrap();
        assert_eq!(l.bytes, 512 << 20);
        assert!(l.file.ends_with("memory/a/memory.limit_in_bytes"));
    }

    #[test]
    fn v1_in_a_cgroup_namespace_the_mount_root() {
        // The path names the host's group, which the container's mount does not show.
        let d = v1_root("/kubepods/burstable/pod9/abc");
        write(
            d.path(),
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "268435456\n",
        );
        assert_eq!(memory_limit(d.path()).unwrap().bytes, 256 << 20);
    }

    #[test]
    fn v1_unlimited_everywhere_is_no_limit() {
        let d = v1_root("/a");
        write(
            d.path(),
            "sys/fs/cgroup/memory/a/memory.limit_in_bytes",
            V1_NONE,
        );
        let e = memory_limit(d.path()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("memory/a/memory.limit_in_bytes: no limit"),
            "{text}"
        );
        assert!(
            text.contains("memory/memory.limit_in_bytes: no limit"),
            "{text}"
        );
        assert!(text.contains("sys/fs/cgroup/memory.max"), "{text}");
    }

    #[test]
    fn v2_the_smallest_limit_along_the_path() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "proc/self/cgroup", "0::/kubepods.slice/pod/c\n");
        write(d.path(), "sys/fs/cgroup/kubepods.slice/memory.max", "max\n");
        write(
            d.path(),
            "sys/fs/cgroup/kubepods.slice/pod/memory.max",
            "2147483648\n",
        );
        write(
            d.path(),
            "sys/fs/cgroup/kubepods.slice/pod/c/memory.max",
            "3221225472\n",
        );
        let l = memory_limit(d.path()).unwrap();
        assert_eq!(l.bytes, 2 << 30);
        assert!(l.file.ends_with("kubepods.slice/pod/memory.max"));
    }

    #[test]
    fn v2_in_a_cgroup_namespace() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "proc/self/cgroup", "0::/\n");
        write(d.path(), "sys/fs/cgroup/memory.max", "805306368\n");
        assert_eq!(memory_limit(d.path()).unwrap().bytes, 768 << 20);
    }

    #[test]
    fn v2_max_is_no_limit() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "proc/self/cgroup", "0::/user.slice\n");
        write(d.path(), "sys/fs/cgroup/user.slice/memory.max", "max\n");
        let e = memory_limit(d.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains("user.slice/memory.max: no limit (max)"),
            "{e}"
        );
    }

    #[test]
    fn no_proc_file_is_no_limit() {
        let d = tempfile::tempdir().unwrap();
        let e = memory_limit(d.path()).unwrap_err();
        assert_eq!(e.read.len(), 1);
        assert!(e.read[0].0.ends_with("proc/self/cgroup"));
    }
}
