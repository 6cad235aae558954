//! `flywheel lane`: render, check and show a lane spec; the runner's job hooks.

use std::io::Write;

use anyhow::Context;
use flywheel_lane::hooks::{self, HookOptions};
use flywheel_lane::image_check::{self, ImageSource};
use flywheel_lane::{render, LaneSpec};

use crate::cli::{LaneCheckArgs, LaneCommand, LaneHookCommand, LaneRenderArgs};

pub fn run(command: LaneCommand) -> anyhow::Result<()> {
    match command {
        LaneCommand::Render(a) => render_cmd(a),
        LaneCommand::Check(a) => check(a),
        LaneCommand::Show { spec } => {
            let spec = LaneSpec::load(&spec)?;
            write!(std::io::stdout().lock(), "{}", spec.to_toml()?)?;
            Ok(())
        }
        LaneCommand::Hook(h) => hook(h),
        LaneCommand::SeedNix { from, to } => {
            let r = flywheel_lane::seed::seed(&from, &to)?;
            let line = if r.already_seeded {
                format!("flywheel: {} is already seeded", to.display())
            } else {
                format!(
                    "flywheel: seeded {} from {}: {} files ({}), {} directories, {} symlinks in {:.1} s{}",
                    to.display(),
                    from.display(),
                    r.files,
                    flywheel_nix::human_bytes(r.bytes),
                    r.dirs,
                    r.symlinks,
                    r.seconds,
                    if r.cleared > 0 {
                        format!(" (an interrupted copy's {} entries cleared first)", r.cleared)
                    } else {
                        String::new()
                    }
                )
            };
            writeln!(std::io::stdout().lock(), "{line}")?;
            Ok(())
        }
    }
}

fn render_cmd(a: LaneRenderArgs) -> anyhow::Result<()> {
    let spec = LaneSpec::load(&a.spec)?;
    if let Some(layout) = a.layout {
        image_check::check(&spec, &ImageSource::Layout(layout), flywheel_lane::runner::today())?;
    }
    let files = render::render(&spec)?;
    render::write(&a.out, &files)?;
    let mut out = std::io::stdout().lock();
    for f in &files {
        writeln!(out, "{}", a.out.join(&f.name).display())?;
    }
    Ok(())
}

fn check(a: LaneCheckArgs) -> anyhow::Result<()> {
    let spec = LaneSpec::load(&a.spec)?;
    let source = match a.layout {
        Some(l) => ImageSource::Layout(l),
        None => ImageSource::Registry { insecure: a.insecure, docker_config: a.docker_config },
    };
    let checked = image_check::check(&spec, &source, a.today.unwrap_or_else(flywheel_lane::runner::today))?;
    let mut out = std::io::stdout().lock();
    for line in checked.lines() {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn hook(h: LaneHookCommand) -> anyhow::Result<()> {
    let flywheel = std::env::current_exe().context("finding flywheel's own executable")?;
    match h {
        LaneHookCommand::JobStarted { no_driver } => {
            let opts = HookOptions::from_env(flywheel, !no_driver);
            let line = hooks::job_started(&opts)?;
            writeln!(std::io::stdout().lock(), "{line}")?;
        }
        LaneHookCommand::JobCompleted => {
            let opts = HookOptions::from_env(flywheel, false);
            // Always exit 0: a job's result never depends on its cleanup.
            let _ = writeln!(std::io::stdout().lock(), "{}", hooks::job_completed(&opts));
        }
    }
    Ok(())
}
