//! flywheel's lane canary: one job that proves a shared GPU lane healthy. Steps (bootstrap, gpu,
//! cuda, vulkan, cache, queue, cleanup) each report a status, a duration, details and, on
//! failure, a remedy; every step runs under a time limit. The run is one JSON-lines event
//! stream, and JUnit XML, a Markdown job summary, a Prometheus textfile and a terminal table
//! are made from it.
//!
//! Data flows one way: host -> checks -> events -> reports.

pub mod checks;
pub mod context;
pub mod events;
pub mod libs;
pub mod probe;
pub mod publish;
pub mod report;
pub mod run;
pub mod step;

pub use context::{Ctx, Options};
pub use events::{Event, Run};
pub use step::{Outcome, Status, StepName, StepResult};
