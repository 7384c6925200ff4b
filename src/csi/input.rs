//! Hygiene for what a request hands to the kernel and to tools: the staging and
//! target paths of the Node calls, and mount flags. Checked before anything is
//! touched; every refusal names the field or flag and says what is accepted.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Longest path the kernel takes (PATH_MAX, 4096 with its NUL).
const MAX_PATH_BYTES: usize = 4095;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InputError {
    #[error(
        "{field} {path:?} {reason}: pass an absolute path with no empty, `.` or `..` components and no NUL byte, as kubelet does"
    )]
    BadPath {
        field: &'static str,
        path: String,
        reason: &'static str,
    },

    #[error(
        "{field} {path:?} is not inside {}, the kubelet directory this node serves: kubelet stages and publishes volumes only under it. Pass a path inside it, or start `vdrive node` with the --kubelet-dir kubelet uses (its --root-dir)",
        dir.display()
    )]
    OutsideKubeletDir {
        field: &'static str,
        path: String,
        dir: PathBuf,
    },

    #[error(
        "mount flag {flag:?}{} {reason}. vdrive allows: {allowed}",
        fs.as_ref().map_or(String::new(), |fs| format!(" (on {fs})"))
    )]
    MountFlag {
        flag: String,
        fs: Option<String>,
        reason: &'static str,
        allowed: String,
    },
}

/// What a mount flag may carry after `=`.
#[derive(Debug, Clone, Copy)]
enum Value {
    /// A bare flag.
    Bare,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A whole number in this range.
    Number(u64, u64),
    /// A size with a k, m or g suffix: a power of two in this byte range.
    PowerOfTwo(u64, u64),
}

/// A mount flag vdrive passes to mount(8): its name, the filesystem it is for
/// (None: any), and its value. Only options that change how the tenant's own
/// filesystem behaves, never what it may reach (no `dev`, `suid`, `exec`) and
/// nothing that can stop the node (`errors=panic`).
const MOUNT_FLAGS: &[(&str, Option<&str>, Value)] = &[
    ("ro", None, Value::Bare),
    ("rw", None, Value::Bare),
    ("noatime", None, Value::Bare),
    ("relatime", None, Value::Bare),
    ("strictatime", None, Value::Bare),
    ("nodiratime", None, Value::Bare),
    ("lazytime", None, Value::Bare),
    ("nolazytime", None, Value::Bare),
    ("nodev", None, Value::Bare),
    ("nosuid", None, Value::Bare),
    ("noexec", None, Value::Bare),
    ("sync", None, Value::Bare),
    ("dirsync", None, Value::Bare),
    ("discard", None, Value::Bare),
    ("nodiscard", None, Value::Bare),
    (
        "data",
        Some("ext4"),
        Value::OneOf(&["ordered", "writeback", "journal"]),
    ),
    ("commit", Some("ext4"), Value::Number(1, 300)),
    (
        "errors",
        Some("ext4"),
        Value::OneOf(&["remount-ro", "continue"]),
    ),
    ("barrier", Some("ext4"), Value::Bare),
    ("auto_da_alloc", Some("ext4"), Value::Bare),
    ("noauto_da_alloc", Some("ext4"), Value::Bare),
    ("delalloc", Some("ext4"), Value::Bare),
    ("nodelalloc", Some("ext4"), Value::Bare),
    ("dioread_nolock", Some("ext4"), Value::Bare),
    ("journal_checksum", Some("ext4"), Value::Bare),
    ("acl", Some("ext4"), Value::Bare),
    ("user_xattr", Some("ext4"), Value::Bare),
    ("inode64", Some("xfs"), Value::Bare),
    ("inode32", Some("xfs"), Value::Bare),
    ("largeio", Some("xfs"), Value::Bare),
    ("nolargeio", Some("xfs"), Value::Bare),
    ("wsync", Some("xfs"), Value::Bare),
    ("swalloc", Some("xfs"), Value::Bare),
    ("filestreams", Some("xfs"), Value::Bare),
    ("grpid", Some("xfs"), Value::Bare),
    ("nogrpid", Some("xfs"), Value::Bare),
    ("noquota", Some("xfs"), Value::Bare),
    (
        "allocsize",
        Some("xfs"),
        Value::PowerOfTwo(4 << 10, 1 << 30),
    ),
    ("logbufs", Some("xfs"), Value::Number(2, 8)),
    (
        "logbsize",
        Some("xfs"),
        Value::PowerOfTwo(16 << 10, 256 << 10),
    ),
];

/// The allowed flags as a person reads them: `commit=<1-300> (ext4)`.
fn allowed_flags() -> String {
    let human = |bytes: u64| match bytes {
        b if b >= 1 << 30 => format!("{}g", b >> 30),
        b if b >= 1 << 20 => format!("{}m", b >> 20),
        b => format!("{}k", b >> 10),
    };
    MOUNT_FLAGS
        .iter()
        .map(|(name, fs, value)| {
            let value = match value {
                Value::Bare => String::new(),
                Value::OneOf(words) => format!("={}", words.join("|")),
                Value::Number(lo, hi) => format!("=<{lo}-{hi}>"),
                Value::PowerOfTwo(lo, hi) => {
                    format!("=<{}-{}, a power of two>", human(*lo), human(*hi))
                }
            };
            let fs = fs.map_or(String::new(), |fs| format!(" ({fs})"));
            format!("{name}{value}{fs}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why `value` is not what `allowed` takes, if it is not.
fn bad_value(allowed: Value, value: Option<&str>) -> Option<&'static str> {
    let size = |text: &str| {
        let (digits, shift) = match text.as_bytes().last() {
            Some(b'k') => (&text[..text.len() - 1], 10),
            Some(b'm') => (&text[..text.len() - 1], 20),
            Some(b'g') => (&text[..text.len() - 1], 30),
            _ => (text, 0),
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
    };
    match (allowed, value) {
        (Value::Bare, None) => None,
        (Value::Bare, Some(_)) => Some("takes no value"),
        (_, None) => Some("needs a value"),
        (Value::OneOf(words), Some(v)) => {
            (!words.contains(&v)).then_some("has a value not allowed")
        }
        (Value::Number(lo, hi), Some(v)) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (lo..=hi).contains(n) && !v.starts_with('+'))
            .is_none()
            .then_some("has a value out of range"),
        (Value::PowerOfTwo(lo, hi), Some(v)) => size(v)
            .filter(|n| (lo..=hi).contains(n) && n.is_power_of_two() && !v.starts_with('+'))
            .is_none()
            .then_some("has a value out of range"),
    }
}

/// Checks the mount flags of a capability for a volume of filesystem `fs`
/// (None: not known yet, so any supported filesystem's flags pass). Each flag
/// is one option: a comma, whitespace or a leading `-` is refused, so nothing
/// can be smuggled into mount(8)'s option string or arguments. Empty flags
/// add nothing and are ignored.
pub fn mount_flags(flags: &[String], fs: Option<&str>) -> Result<(), InputError> {
    for flag in flags.iter().filter(|f| !f.is_empty()) {
        let refuse = |reason: &'static str| InputError::MountFlag {
            flag: flag.clone(),
            fs: fs.map(str::to_string),
            reason,
            allowed: allowed_flags(),
        };
        if flag.contains(',') {
            return Err(refuse(
                "holds a comma: give each option as a flag of its own",
            ));
        }
        if flag.starts_with('-') || flag.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(refuse(
                "starts with `-` or holds whitespace or control characters",
            ));
        }
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (flag.as_str(), None),
        };
        let Some(&(_, for_fs, allowed)) = MOUNT_FLAGS.iter().find(|(n, _, _)| *n == name) else {
            return Err(refuse("is not on vdrive's list"));
        };
        if let (Some(for_fs), Some(fs)) = (for_fs, fs)
            && for_fs != fs
        {
            return Err(refuse("is for another filesystem"));
        }
        if let Some(reason) = bad_value(allowed, value) {
            return Err(refuse(reason));
        }
    }
    Ok(())
}

/// Why `path` is not an absolute, clean path, if it is not. `/` itself is clean
/// only where `root_ok` (a directory to stay inside, never a path to mount on).
fn unclean(path: &str, root_ok: bool) -> Option<&'static str> {
    if path.contains('\0') {
        return Some("contains a NUL byte");
    }
    if path.len() > MAX_PATH_BYTES {
        return Some("is longer than the kernel's limit of 4095 bytes");
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Some("is not absolute");
    };
    if rest.is_empty() && root_ok {
        return None;
    }
    rest.split('/').find_map(|component| match component {
        "" => Some("has an empty component (`//`, or a trailing `/`)"),
        "." => Some("has a `.` component"),
        ".." => Some("has a `..` component"),
        _ => None,
    })
}

/// A staging or target path from a request (`field` names it in refusals):
/// absolute and clean, and strictly inside `kubelet_dir` when one is set. The
/// check is on the text: kubelet makes these directories, and a clean path
/// under its directory is one of kubelet's.
pub fn node_path(
    field: &'static str,
    path: &str,
    kubelet_dir: Option<&Path>,
) -> Result<PathBuf, InputError> {
    if let Some(reason) = unclean(path, false) {
        return Err(InputError::BadPath {
            field,
            path: path.to_string(),
            reason,
        });
    }
    let checked = PathBuf::from(path);
    if let Some(dir) = kubelet_dir
        && (!checked.starts_with(dir) || checked == dir)
    {
        return Err(InputError::OutsideKubeletDir {
            field,
            path: path.to_string(),
            dir: dir.to_path_buf(),
        });
    }
    Ok(checked)
}

/// Checks a `--kubelet-dir` value: absolute and clean (`/` allows any path).
pub fn kubelet_dir(dir: &Path) -> Result<PathBuf, String> {
    let text = dir
        .to_str()
        .ok_or_else(|| format!("--kubelet-dir {} is not UTF-8", dir.display()))?;
    match unclean(text, true) {
        Some(reason) => Err(format!(
            "--kubelet-dir {text:?} {reason}: give kubelet's root directory as an absolute path, e.g. /var/lib/kubelet"
        )),
        None => Ok(dir.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_clean_paths_pass() {
        assert_eq!(
            node_path("target_path", "/var/lib/kubelet/pods/x/mount", None),
            Ok(PathBuf::from("/var/lib/kubelet/pods/x/mount"))
        );
        for (bad, reason) in [
            ("some/path", "is not absolute"),
            ("/a/../b", "has a `..` component"),
            ("/a/..", "has a `..` component"),
            ("/a/./b", "has a `.` component"),
            ("/a//b", "has an empty component"),
            ("/a/b/", "has an empty component"),
            ("/", "has an empty component"),
            ("/a\0b", "contains a NUL byte"),
        ] {
            let err = node_path("staging_target_path", bad, None).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("staging_target_path"), "{text}");
            assert!(text.contains(reason), "{bad:?}: {text}");
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert!(node_path("target_path", &long, None).is_err());
        // Names that merely start with dots are names.
        assert!(node_path("target_path", "/a/..b/.c/...", None).is_ok());
    }

    #[test]
    fn a_kubelet_dir_keeps_paths_strictly_inside_it() {
        let dir = Path::new("/var/lib/kubelet");
        assert!(node_path("target_path", "/var/lib/kubelet/pods/x", Some(dir)).is_ok());
        for outside in ["/var/lib/kubelet", "/var/lib/kubelet2/x", "/etc/x"] {
            let err = node_path("target_path", outside, Some(dir)).unwrap_err();
            assert!(
                matches!(
                    &err,
                    InputError::OutsideKubeletDir {
                        field: "target_path",
                        ..
                    }
                ),
                "{outside}: {err}"
            );
            assert!(err.to_string().contains("/var/lib/kubelet,"), "{err}");
        }
        assert!(node_path("target_path", "/anything", Some(Path::new("/"))).is_ok());
    }

    fn flags(list: &[&str], fs: Option<&str>) -> Result<(), InputError> {
        mount_flags(&list.iter().map(|f| f.to_string()).collect::<Vec<_>>(), fs)
    }

    #[test]
    fn mount_flags_come_from_the_list() {
        let common = [
            "ro", "noatime", "nodev", "nosuid", "noexec", "discard", "lazytime", "",
        ];
        for fs in [None, Some("ext4"), Some("xfs")] {
            assert_eq!(flags(&common, fs), Ok(()), "{fs:?}");
        }
        assert_eq!(
            flags(
                &["data=ordered", "commit=30", "errors=remount-ro"],
                Some("ext4")
            ),
            Ok(())
        );
        assert_eq!(
            flags(
                &["allocsize=64k", "logbufs=8", "logbsize=256k", "inode64"],
                Some("xfs")
            ),
            Ok(())
        );
        assert_eq!(flags(&["data=ordered", "allocsize=1m"], None), Ok(()));
        for (bad, fs, reason) in [
            ("noatime,exec", None, "holds a comma"),
            ("ro,dev", Some("ext4"), "holds a comma"),
            ("-o", None, "starts with `-`"),
            ("--bind", None, "starts with `-`"),
            ("ro ", None, "whitespace"),
            ("dev", None, "is not on vdrive's list"),
            ("suid", None, "is not on vdrive's list"),
            ("errors=panic", Some("ext4"), "has a value not allowed"),
            ("data=ordered", Some("xfs"), "is for another filesystem"),
            ("inode64", Some("ext4"), "is for another filesystem"),
            ("commit=0", Some("ext4"), "out of range"),
            ("commit=+5", Some("ext4"), "out of range"),
            ("commit=99999999999999999999", Some("ext4"), "out of range"),
            ("allocsize=3k", Some("xfs"), "out of range"),
            (
                "allocsize=18446744073709551615g",
                Some("xfs"),
                "out of range",
            ),
            ("commit", Some("ext4"), "needs a value"),
            ("noatime=1", None, "takes no value"),
        ] {
            let err = flags(&["noatime", bad], fs).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(&format!("{bad:?}")), "{text}");
            assert!(text.contains(reason), "{bad}: {text}");
            assert!(text.contains("vdrive allows: ro, rw, noatime"), "{text}");
            assert!(text.contains("commit=<1-300> (ext4)"), "{text}");
        }
    }

    #[test]
    fn the_kubelet_dir_itself_must_be_absolute_and_clean() {
        assert!(kubelet_dir(Path::new("/var/lib/kubelet")).is_ok());
        assert!(kubelet_dir(Path::new("/")).is_ok());
        for bad in [
            "var/lib/kubelet",
            "/var/../kubelet",
            "/var/lib/kubelet/",
            "",
        ] {
            assert!(kubelet_dir(Path::new(bad)).is_err(), "{bad:?}");
        }
    }
}
