//! Hygiene for what a request hands to the kernel and to tools: the staging and
//! target paths of the Node calls. Checked before anything is touched; every
//! refusal names the field and says what would be accepted.

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
