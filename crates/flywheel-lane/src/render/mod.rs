//! `flywheel lane render SPEC --out DIR`: a validated spec to the files an operator applies.
//! The same spec gives the same bytes: typed structs in a fixed order, sorted maps, and no
//! time or host in the output (the header names the spec by its content's digest).
//!
//! - `values.yaml`: Helm values for `gha-runner-scale-set` ([`values`])
//! - `NAME-canary.yml`: the lane's canary workflow ([`workflow`])
//! - `README.md`: the operator's page for the lane ([`readme`])

mod readme;
pub mod values;
pub mod workflow;

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{LaneError, LaneSpec};

/// One rendered file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Renders a spec that passed validation ([`LaneSpec::load`] or [`crate::validate::validate`]).
pub fn render(spec: &LaneSpec) -> Result<Vec<File>, LaneError> {
    crate::validate::validate(spec).map_err(|problems| LaneError::Invalid { origin: spec.name.clone(), problems })?;
    let canonical = spec.to_toml()?;
    let digest = Sha256::digest(canonical.as_bytes());
    let spec_id = format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let header = |what: &str| {
        format!(
            "# {what} for the {} lane, rendered by `flywheel lane render` from the lane spec {spec_id}.\n# Do not edit: change the spec and render again (docs/lane.md).\n",
            spec.name
        )
    };
    let yaml_error = |e: serde_yaml_ng::Error| LaneError::Other(format!("writing YAML: {e}"));
    let values_yaml = serde_yaml_ng::to_string(&values::values(spec)).map_err(yaml_error)?;
    let workflow_yaml = serde_yaml_ng::to_string(&workflow::workflow(spec)).map_err(yaml_error)?;
    Ok(vec![
        File {
            name: "values.yaml".into(),
            bytes: format!(
                "{}# helm upgrade --install {} oci://ghcr.io/actions/actions-runner-controller-charts/{} --version {} --namespace {} --values values.yaml\n{values_yaml}",
                header(&format!("Helm values ({} {})", crate::spec::CHART, spec.chart_version)),
                spec.name,
                crate::spec::CHART,
                spec.chart_version,
                spec.namespace
            )
            .into_bytes(),
        },
        File {
            name: workflow::file_name(spec),
            bytes: format!("{}{workflow_yaml}", header("The canary workflow")).into_bytes(),
        },
        File { name: "README.md".into(), bytes: readme::readme(spec, &spec_id).into_bytes() },
    ])
}

/// Writes `files` into `out` (created if missing), each to a temporary name first and renamed
/// into place, so a reader sees a file whole or not at all.
pub fn write(out: &Path, files: &[File]) -> Result<(), LaneError> {
    let io = |path: &Path, e: std::io::Error| LaneError::Io { path: path.to_path_buf(), source: e };
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let mut staged = Vec::new();
    for f in files {
        let mut tmp =
            tempfile::Builder::new().prefix(&format!(".{}.", f.name)).tempfile_in(out).map_err(|e| io(out, e))?;
        tmp.write_all(&f.bytes).map_err(|e| io(tmp.path(), e))?;
        tmp.as_file().sync_all().map_err(|e| io(tmp.path(), e))?;
        staged.push((tmp, out.join(&f.name)));
    }
    // Every file is written before any is renamed: an error above leaves the old ones as they were.
    for (tmp, dest) in staged {
        tmp.persist(&dest).map_err(|e| io(&dest, e.error))?;
        set_readable(&dest)?;
    }
    Ok(())
}

/// tempfile creates files 0600; rendered files are for everyone to read, as `cp` would leave them.
fn set_readable(path: &Path) -> Result<(), LaneError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| LaneError::Io { path: path.to_path_buf(), source: e })
}
