use std::io::Write;

use anyhow::{bail, Context};
use flywheel_driver::cdi::{self, CdiOptions};
use flywheel_driver::check;
use flywheel_driver::{Arch, Capabilities, DiscoverOptions};

use super::human_bytes;
use crate::cli::{DriverCdiArgs, DriverCheckArgs, DriverCollectArgs, DriverCommand, DriverRootArgs};

pub fn run(command: DriverCommand) -> anyhow::Result<()> {
    match command {
        DriverCommand::Collect(a) => collect(a),
        DriverCommand::Cdi(a) => cdi(a),
        DriverCommand::Check(a) => check(a),
    }
}

fn discover(
    root: &DriverRootArgs,
    capabilities: Capabilities,
    strict: bool,
) -> anyhow::Result<flywheel_driver::Driver> {
    let opts =
        DiscoverOptions { capabilities, arch: root.arch.unwrap_or_else(Arch::host), nvml: !root.no_nvml, strict };
    Ok(flywheel_driver::discover(&root.roots, &opts)?)
}

fn collect(a: DriverCollectArgs) -> anyhow::Result<()> {
    // `all` takes what the driver has; named capabilities must be there.
    let strict = a.capabilities != Capabilities(flywheel_driver::Capability::ALL.into_iter().collect());
    let driver = discover(&a.root, a.capabilities, strict)?;
    if let Some(want) = &a.expect_version {
        if driver.version.as_str() != want {
            bail!("the driver under the driver root is {}, not {want} (--expect-version)", driver.version);
        }
    }
    tracing::info!(
        "NVIDIA driver {} ({}): {} libraries, {} binaries, {} firmware files",
        driver.version,
        driver.version_sources.join(", "),
        driver.libraries.len(),
        driver.binaries.len(),
        driver.firmware.len()
    );
    let report = flywheel_driver::collect::collect(&driver, &a.out)
        .with_context(|| format!("collecting into {}", a.out.display()))?;
    let mut stdout = std::io::stdout().lock();
    if a.json {
        stdout.write_all(&report.manifest.to_bytes())?;
    } else {
        writeln!(
            stdout,
            "collected NVIDIA driver {} ({}) into {}: {} entries, {}",
            report.manifest.version,
            report.manifest.capabilities.join(","),
            report.out.display(),
            report.files,
            human_bytes(report.bytes)
        )?;
    }
    Ok(())
}

fn cdi(a: DriverCdiArgs) -> anyhow::Result<()> {
    let strict = a.capabilities.is_some();
    let caps = a.capabilities.unwrap_or_else(|| "all".parse().unwrap_or_default());
    let driver = discover(&a.root, caps, strict)?;
    let spec = cdi::generate(&driver, &CdiOptions { dev_root: a.dev_root, hook_path: a.hook_path })?;
    let text = if a.format == "json" { spec.to_json() } else { spec.to_yaml()? };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

fn check(a: DriverCheckArgs) -> anyhow::Result<()> {
    let user = match (&a.image, &a.tree) {
        (Some(image), _) => flywheel_oci::driver::userspace_of_image(image)?,
        (None, tree) => check::userspace_of_tree(tree.as_deref().unwrap_or(std::path::Path::new("/")))?,
    };
    let line = check::check(&user, &a.kernel_version_file)?;
    writeln!(std::io::stdout().lock(), "{line}")?;
    Ok(())
}
