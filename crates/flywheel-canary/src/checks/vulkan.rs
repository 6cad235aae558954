//! TODO

use crate::context::Ctx;
use crate::step::Outcome;

pub fn run(_ctx: &Ctx) -> Outcome {
    Outcome::unavailable("not built yet", "")
}
