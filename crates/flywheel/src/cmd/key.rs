use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::Context;
use flywheel_nix::keys::SecretKey;

use crate::cli::KeyCommand;

pub fn run(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Generate { name, out } => {
            let key = SecretKey::generate(&name).with_context(|| format!("generating key {name:?}"))?;
            match out {
                None => print!("{}", key.to_nix_string()),
                Some(path) => {
                    let write = || -> std::io::Result<()> {
                        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
                        f.write_all(key.to_nix_string().as_bytes())?;
                        f.sync_all()
                    };
                    if let Err(e) = write() {
                        if e.kind() != std::io::ErrorKind::AlreadyExists {
                            let _ = std::fs::remove_file(&path);
                        }
                        return Err(e).with_context(|| format!("writing {}", path.display()));
                    }
                    println!("{}", key.public());
                }
            }
            Ok(())
        }
        KeyCommand::Public { file } => {
            let key = SecretKey::read_file(&file).with_context(|| format!("reading secret key {}", file.display()))?;
            println!("{}", key.public());
            Ok(())
        }
    }
}
