//! Driver versions: from library file names, from the kernel module's
//! `/proc/driver/nvidia/version`, and their comparison.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `580.159.04`, `535.54.03`, `390.157`: two or three dot-separated numbers, compared as
/// written (a library ends in exactly the kernel module's string, leading zeros included).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DriverVersion(String);

impl DriverVersion {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Splits `libcuda.so.580.159.04` into (`libcuda`, version).
    pub fn from_library_name(name: &str) -> Option<(&str, DriverVersion)> {
        let (base, rest) = name.split_once(".so.")?;
        Some((base, rest.parse().ok()?))
    }

    /// The version in the text of `/proc/driver/nvidia/version`, whose first line reads e.g.
    /// `NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build ...`
    /// or `NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.54.03  Tue Jun  6 ...`.
    pub fn from_proc_text(text: &str) -> Option<DriverVersion> {
        let line = text.lines().find(|l| l.trim_start().starts_with("NVRM version:"))?;
        let after = line.split_once("Module").map_or(line, |(_, r)| r);
        after.split_whitespace().find_map(|w| w.parse().ok())
    }

    pub fn from_proc_file(path: &Path) -> Result<DriverVersion, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_proc_text(&text).ok_or_else(|| format!("{}: no NVRM version line", path.display()))
    }
}

impl FromStr for DriverVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('.').collect();
        let ok = (2..=3).contains(&parts.len())
            && parts.iter().all(|p| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()));
        if ok {
            Ok(DriverVersion(s.to_string()))
        } else {
            Err(format!("{s:?} is not a driver version (like 580.159.04)"))
        }
    }
}

impl TryFrom<String> for DriverVersion {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DriverVersion> for String {
    fn from(v: DriverVersion) -> String {
        v.0
    }
}

impl fmt::Display for DriverVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_both_proc_formats() {
        let open = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (dvs-builder@U22)  Thu Oct  9 2025\nGCC version:  gcc version 12.2.0\n";
        assert_eq!(DriverVersion::from_proc_text(open).map(|v| v.0), Some("580.159.04".into()));
        let old = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.54.03  Tue Jun  6 22:20:39 UTC 2023\n";
        assert_eq!(DriverVersion::from_proc_text(old).map(|v| v.0), Some("535.54.03".into()));
        assert_eq!(DriverVersion::from_proc_text("GCC version: 12.2.0\n"), None);
    }

    #[test]
    fn library_names() {
        let (base, v) = DriverVersion::from_library_name("libnvidia-ml.so.580.159.04").expect("versioned");
        assert_eq!((base, v.as_str()), ("libnvidia-ml", "580.159.04"));
        assert!(DriverVersion::from_library_name("libcuda.so.1").is_none());
        assert!(DriverVersion::from_library_name("libcuda.so").is_none());
        assert!(DriverVersion::from_library_name("libEGL_nvidia.so.0").is_none());
    }

    proptest! {
        #[test]
        fn versions_round_trip_through_names_and_proc_text(a in 1u32..1000, b in 0u32..1000, c in proptest::option::of(0u32..100)) {
            let v = match c { Some(c) => format!("{a}.{b}.{c:02}"), None => format!("{a}.{b}") };
            let name = format!("libcuda.so.{v}");
            let (_, parsed) = DriverVersion::from_library_name(&name).expect("parses");
            prop_assert_eq!(parsed.as_str(), v.as_str());
            let text = format!("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {v}  Release Build\n");
            prop_assert_eq!(DriverVersion::from_proc_text(&text), Some(parsed));
        }
    }
}
