//! Validating a CNI_NETNS path and opening the namespace it names.
//!
//! The runtime passes a path; the agent runs as root, so the path is treated
//! as untrusted: it must be absolute, contain no `..`, resolve (after
//! following symlinks) under a prefix a container runtime uses, and be an
//! nsfs file of a *network* namespace. The namespace is opened once and used
//! through the file descriptor afterwards, so a path swapped after the check
//! cannot redirect later work.

use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// Prefixes a runtime passes netns paths under, by default:
/// iproute2/CNI tools, containerd/CRI-O (`/var/run/netns`, `/run/netns`),
/// Docker (`/var/run/docker/netns`, `/run/docker/netns`). `/proc/<pid>/ns/net`
/// (and `/proc/<pid>/task/<tid>/ns/net`) is allowed separately by
/// [`NetnsPolicy::allow_proc`].
pub const DEFAULT_ALLOWED_PREFIXES: &[&str] = &[
    "/var/run/netns",
    "/run/netns",
    "/var/run/docker/netns",
    "/run/docker/netns",
];

/// Which netns paths the agent accepts.
#[derive(Debug, Clone)]
pub struct NetnsPolicy {
    /// Directory prefixes; the resolved path must lie inside one of them.
    pub allowed_prefixes: Vec<PathBuf>,
    /// Accept `/proc/<pid>/ns/net` and `/proc/<pid>/task/<tid>/ns/net`
    /// (never `/proc/self/...`, which is the agent itself).
    pub allow_proc: bool,
    /// Refuse the agent's own network namespace (a pod must never be wired
    /// into the node's namespace). Off only where the caller opens the node
    /// namespace itself on purpose.
    pub reject_own_namespace: bool,
}

impl Default for NetnsPolicy {
    fn default() -> Self {
        NetnsPolicy {
            allowed_prefixes: DEFAULT_ALLOWED_PREFIXES.iter().map(PathBuf::from).collect(),
            allow_proc: true,
            reject_own_namespace: true,
        }
    }
}

/// Why a netns could not be used or entered.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Empty path.
    #[error("netns path is empty")]
    Empty,
    /// Relative path.
    #[error("netns path {0:?} is not absolute")]
    NotAbsolute(PathBuf),
    /// Contains `..`.
    #[error("netns path {0:?} contains '..'")]
    ParentComponent(PathBuf),
    /// Does not exist.
    #[error("netns path {0:?} does not exist")]
    NotFound(PathBuf),
    /// Resolves outside the allowed prefixes.
    #[error(
        "netns path {path:?} resolves to {resolved:?}, which is not under an allowed prefix {allowed:?}"
    )]
    NotAllowed {
        /// As given.
        path: PathBuf,
        /// After resolving symlinks.
        resolved: PathBuf,
        /// The allowed prefixes.
        allowed: Vec<PathBuf>,
    },
    /// Exists but is no network namespace.
    #[error("netns path {path:?} is not a network namespace: {reason}")]
    NotNetns {
        /// As given.
        path: PathBuf,
        /// What it is instead.
        reason: String,
    },
    /// A system call on the path failed.
    #[error("netns {path:?}: {op} failed: {source}")]
    Io {
        /// As given.
        path: PathBuf,
        /// Which operation.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// setns(2) into the namespace failed on the worker thread.
    #[error("entering netns {netns} failed: {source}")]
    Enter {
        /// The namespace.
        netns: String,
        /// The errno.
        source: nix::Error,
    },
    /// The dedicated thread could not be started.
    #[error("cannot start a thread for netns {netns}: {source}")]
    Spawn {
        /// The namespace.
        netns: String,
        /// The error.
        source: std::io::Error,
    },
    /// The path names the agent's own network namespace.
    #[error("netns path {0:?} is the agent's own network namespace, not a pod's")]
    OwnNamespace(PathBuf),
    /// The work inside the namespace panicked.
    #[error("the work inside netns {netns} panicked")]
    Panicked {
        /// The namespace.
        netns: String,
    },
}

/// The error of `op` on the namespace path `path`: [`NetnsError::NotFound`]
/// when nothing is there.
fn path_error(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> NetnsError + use<> {
    let path = path.to_path_buf();
    move |source| match source.kind() {
        std::io::ErrorKind::NotFound => NetnsError::NotFound(path),
        _ => NetnsError::Io { path, op, source },
    }
}

/// An open network namespace whose path passed [`NetnsPolicy`].
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    fd: OwnedFd,
    inode: u64,
    device: u64,
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

impl Netns {
    /// Validates `path` against `policy` and opens it.
    pub fn open(path: impl AsRef<Path>, policy: &NetnsPolicy) -> Result<Netns, NetnsError> {
        let path = path.as_ref();
        if path.as_os_str().is_empty() {
            return Err(NetnsError::Empty);
        }
        if !path.is_absolute() {
            return Err(NetnsError::NotAbsolute(path.to_path_buf()));
        }
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(NetnsError::ParentComponent(path.to_path_buf()));
        }
        let to_open = if is_proc_netns_path(path) {
            if !policy.allow_proc {
                return Err(NetnsError::NotAllowed {
                    path: path.to_path_buf(),
                    resolved: path.to_path_buf(),
                    allowed: policy.allowed_prefixes.clone(),
                });
            }
            // A magic link: resolving it gives "net:[inode]", so it is opened
            // as is; the pattern already pins it to a numbered process.
            path.to_path_buf()
        } else {
            let resolved = std::fs::canonicalize(path).map_err(path_error(path, "resolving"))?;
            let allowed = policy.allowed_prefixes.iter().any(|prefix| {
                let canonical_prefix =
                    std::fs::canonicalize(prefix).unwrap_or_else(|_| prefix.clone());
                resolved.starts_with(&canonical_prefix) && resolved != canonical_prefix
            });
            if !allowed {
                return Err(NetnsError::NotAllowed {
                    path: path.to_path_buf(),
                    resolved,
                    allowed: policy.allowed_prefixes.clone(),
                });
            }
            resolved
        };
        let file = File::open(&to_open).map_err(path_error(path, "opening"))?;
        check_is_network_namespace(path, &file)?;
        let meta = file.metadata().map_err(|source| NetnsError::Io {
            path: path.to_path_buf(),
            op: "fstat",
            source,
        })?;
        if policy.reject_own_namespace
            && let Ok(own) = std::fs::metadata("/proc/self/ns/net")
            && own.ino() == meta.ino()
            && own.dev() == meta.dev()
        {
            return Err(NetnsError::OwnNamespace(path.to_path_buf()));
        }
        Ok(Netns {
            path: path.to_path_buf(),
            inode: meta.ino(),
            device: meta.dev(),
            fd: OwnedFd::from(file),
        })
    }

    /// The path as given by the runtime (what a CNI result reports as sandbox).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's inode number (as `ip netns identify` / `ls -L -i` show).
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// The open namespace file.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A second descriptor for the same namespace.
    pub fn try_clone_fd(&self) -> Result<OwnedFd, NetnsError> {
        self.fd.try_clone().map_err(|source| NetnsError::Io {
            path: self.path.clone(),
            op: "dup",
            source,
        })
    }

    /// True if the namespace is the same as the one `other` names.
    pub fn same_namespace(&self, other: &Netns) -> bool {
        self.inode == other.inode && self.device == other.device
    }
}

/// `/proc/<digits>/ns/net` or `/proc/<digits>/task/<digits>/ns/net`.
fn is_proc_netns_path(path: &Path) -> bool {
    let parts: Vec<&str> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        ["proc", pid, "ns", "net"] => numeric(pid),
        ["proc", pid, "task", tid, "ns", "net"] => numeric(pid) && numeric(tid),
        _ => false,
    }
}

nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);

fn check_is_network_namespace(path: &Path, file: &File) -> Result<(), NetnsError> {
    let not_netns = |reason: String| NetnsError::NotNetns {
        path: path.to_path_buf(),
        reason,
    };
    let fs = nix::sys::statfs::fstatfs(file).map_err(|errno| NetnsError::Io {
        path: path.to_path_buf(),
        op: "fstatfs",
        source: errno.into(),
    })?;
    if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        let kind = match file.metadata() {
            Ok(m) if m.is_dir() => "a directory",
            Ok(m) if m.is_file() => "a regular file",
            Ok(_) => "a special file",
            Err(_) => "a file",
        };
        return Err(not_netns(format!(
            "it is {kind}, not a namespace file (nsfs)"
        )));
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the namespace
    // type of the open nsfs descriptor, which `file` keeps alive.
    #[allow(unsafe_code)]
    let nstype = unsafe { ns_get_nstype(file.as_raw_fd()) }.map_err(|errno| NetnsError::Io {
        path: path.to_path_buf(),
        op: "ioctl(NS_GET_NSTYPE)",
        source: errno.into(),
    })?;
    if nstype != libc::CLONE_NEWNET {
        let kind = match nstype {
            libc::CLONE_NEWNS => "mount",
            libc::CLONE_NEWPID => "pid",
            libc::CLONE_NEWUTS => "uts",
            libc::CLONE_NEWIPC => "ipc",
            libc::CLONE_NEWUSER => "user",
            libc::CLONE_NEWCGROUP => "cgroup",
            _ => "non-network",
        };
        return Err(not_netns(format!("it is a {kind} namespace")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_pattern() {
        assert!(is_proc_netns_path(Path::new("/proc/123/ns/net")));
        assert!(is_proc_netns_path(Path::new("/proc/1/task/77/ns/net")));
        assert!(!is_proc_netns_path(Path::new("/proc/self/ns/net")));
        assert!(!is_proc_netns_path(Path::new("/proc/123/ns/mnt")));
        assert!(!is_proc_netns_path(Path::new("/proc/12a/ns/net")));
        assert!(!is_proc_netns_path(Path::new("/run/proc/1/ns/net")));
    }

    #[test]
    fn lexical_rejections_need_no_filesystem() {
        let p = NetnsPolicy::default();
        assert!(matches!(Netns::open("", &p), Err(NetnsError::Empty)));
        assert!(matches!(
            Netns::open("run/netns/x", &p),
            Err(NetnsError::NotAbsolute(_))
        ));
        let e = Netns::open("/var/run/netns/../../etc/passwd", &p).unwrap_err();
        assert!(matches!(e, NetnsError::ParentComponent(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "netns path \"/var/run/netns/../../etc/passwd\" contains '..'"
        );
    }

    #[test]
    fn own_process_namespace_is_a_network_namespace() {
        // /proc/<own pid>/ns/net passes every check (it is the agent's own
        // namespace, which the caller must not use as a pod's; this only
        // exercises the nsfs and NS_GET_NSTYPE checks).
        let path = format!("/proc/{}/ns/net", std::process::id());
        let permissive = NetnsPolicy {
            reject_own_namespace: false,
            ..NetnsPolicy::default()
        };
        let ns = Netns::open(&path, &permissive).unwrap();
        assert!(ns.inode() > 0);
        let e = Netns::open(&path, &NetnsPolicy::default()).unwrap_err();
        assert!(matches!(e, NetnsError::OwnNamespace(_)), "{e}");
        let mnt = File::open("/proc/self/ns/mnt").unwrap();
        let e = check_is_network_namespace(Path::new("/proc/self/ns/mnt"), &mnt).unwrap_err();
        assert!(e.to_string().contains("mount namespace"), "{e}");
    }
}
