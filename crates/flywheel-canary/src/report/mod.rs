//! Reports made from a run's events: TODO
