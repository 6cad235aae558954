//! NVML backend: TODO
