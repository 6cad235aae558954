//! One module per step. Each takes the run's context and returns an [`Outcome`]; none panics on
//! what it finds (a missing library, a dead server), it reports it.

pub mod bootstrap;
pub mod cache;
pub mod cleanup;
pub mod clock;
pub mod command;
pub mod cuda;
pub mod gpu;
pub mod queue;
pub mod vulkan;

use crate::context::Ctx;
use crate::step::{Outcome, StepName};

pub fn run(step: StepName, ctx: &Ctx) -> Outcome {
    match step {
        StepName::Bootstrap => bootstrap::run(ctx),
        StepName::Gpu => gpu::run(ctx),
        StepName::Cuda => cuda::run(ctx),
        StepName::Vulkan => vulkan::run(ctx),
        StepName::Cache => cache::run(ctx),
        StepName::Queue => queue::run(ctx),
        StepName::Cleanup => cleanup::run(ctx),
    }
}
