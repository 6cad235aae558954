//! Output paths of store derivations, computed from the `.drv` files alone.
//!
//! An input-addressed output path is a hash of the derivation "modulo" its fixed-output
//! inputs, which needs the same hash of every input derivation in turn; this walks them
//! through the store, remembering each one. Parsing and the hash algorithm come from
//! `nix-derivation`; this module only feeds it `.drv` files.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use nix_derivation::{
    Derivation, InputDerivationHash, InputResolutionError, Output, OutputPathHash, StoreDir, StorePath,
};

#[derive(Debug, thiserror::Error)]
pub enum DerivationError {
    #[error("{path}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}")]
    Parse { path: String, source: Box<nix_derivation::Error> },
    #[error("{0} is not a derivation (.drv) path")]
    NotDerivation(String),
}

/// Computes derivation hashes and output paths, reading `.drv` files from a store on disk.
pub struct Derivations {
    store_dir: StoreDir,
    /// Where the store's files really are (differs from `store_dir` for a chroot store).
    real_store: PathBuf,
    hashes: HashMap<StorePath, InputDerivationHash>,
}

impl Derivations {
    pub fn new(store_dir: StoreDir, real_store: PathBuf) -> Self {
        Self { store_dir, real_store, hashes: HashMap::new() }
    }

    pub fn load(&self, drv_path: &StorePath) -> Result<Derivation, DerivationError> {
        let shown = self.store_dir.render_path(drv_path);
        let name = drv_path.name().strip_suffix(".drv").ok_or_else(|| DerivationError::NotDerivation(shown.clone()))?;
        let file = self.real_store.join(drv_path.to_basename());
        let bytes = std::fs::read(&file).map_err(|source| DerivationError::Read { path: shown.clone(), source })?;
        Derivation::from_aterm_bytes_in(&bytes, name, self.store_dir.clone())
            .map_err(|source| DerivationError::Parse { path: shown, source: Box::new(source) })
    }

    /// The output paths the derivation at `drv_path` will have, computed, not read from it.
    /// Outputs whose path is only known after building (floating content addressing) are `None`.
    pub fn output_paths(
        &mut self,
        drv_path: &StorePath,
    ) -> Result<BTreeMap<String, Option<StorePath>>, DerivationError> {
        let drv = self.load(drv_path)?;
        let shown = self.store_dir.render_path(drv_path);
        let parse_error = |source| DerivationError::Parse { path: shown.clone(), source: Box::new(source) };
        let needs_modulo =
            drv.outputs().values().any(|o| matches!(o, Output::InputAddressed { .. } | Output::Deferred));
        let modulo = if needs_modulo {
            match drv.try_hash_output_path_modulo(|input| self.input_hash(input)) {
                Ok(OutputPathHash::Ready(h)) => Some(h),
                Ok(OutputPathHash::Deferred) => None,
                Err(e) => return Err(unwrap_resolution(e, &shown)),
            }
        } else {
            None
        };
        let mut out = BTreeMap::new();
        for (name, output) in drv.outputs() {
            let path = match (output, modulo) {
                (Output::InputAddressed { .. } | Output::Deferred, Some(h)) => {
                    Some(self.store_dir.build_output_path(h, name, drv.name()).map_err(|e| parse_error(e.into()))?)
                }
                _ => output.path_in(&self.store_dir, drv.name(), name).map_err(parse_error)?,
            };
            out.insert(name.clone(), path);
        }
        Ok(out)
    }

    /// The derivation's own path, recomputed from its contents (a text path).
    pub fn drv_path(&self, drv_path: &StorePath) -> Result<StorePath, DerivationError> {
        let shown = self.store_dir.render_path(drv_path);
        self.load(drv_path)?
            .drv_path()
            .map_err(|source| DerivationError::Parse { path: shown, source: Box::new(source) })
    }

    fn input_hash(&mut self, drv_path: &StorePath) -> Result<InputDerivationHash, DerivationError> {
        if let Some(h) = self.hashes.get(drv_path) {
            return Ok(*h);
        }
        let drv = self.load(drv_path)?;
        let shown = self.store_dir.render_path(drv_path);
        let h = drv
            .try_hash_input_derivation_modulo(|input| self.input_hash(input))
            .map_err(|e| unwrap_resolution(e, &shown))?;
        self.hashes.insert(drv_path.clone(), h);
        Ok(h)
    }
}

fn unwrap_resolution(e: InputResolutionError<DerivationError>, shown: &str) -> DerivationError {
    match e {
        InputResolutionError::Derivation(source) => {
            DerivationError::Parse { path: shown.to_string(), source: Box::new(source) }
        }
        InputResolutionError::Resolve { error, .. } => error,
        other => DerivationError::Parse {
            path: shown.to_string(),
            source: Box::new(nix_derivation::Error::InvalidDerivation(other.to_string())),
        },
    }
}
