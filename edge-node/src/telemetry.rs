//! GPU telemetry through NVML (`nvml-wrapper`): utilisation, memory, encoder load, temperature.
//!
//! NVML is loaded at run time, so the node starts on machines without an NVIDIA driver and then
//! reports telemetry as unavailable, with the reason, instead of failing.

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use serde::Serialize;

/// One GPU's readings. A field is `None` when the GPU does not support that reading (an H100 has
/// no NVENC, so it has no encoder readings).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GpuSample {
    /// GPU index as NVML numbers them.
    pub index: u32,
    /// Model name.
    pub name: String,
    /// Busy time of the graphics/compute engines, percent.
    pub gpu_utilization_percent: Option<u32>,
    /// Memory in use, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Memory in all, bytes.
    pub memory_total_bytes: Option<u64>,
    /// Busy time of the video encoder, percent.
    pub encoder_utilization_percent: Option<u32>,
    /// Encoder sessions open on the GPU.
    pub encoder_sessions: Option<u32>,
    /// Core temperature.
    pub temperature_celsius: Option<u32>,
    /// Board power draw.
    pub power_milliwatts: Option<u32>,
}

/// A telemetry reading: samples from every NVIDIA GPU, or why there are none.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum GpuTelemetry {
    /// NVML answered.
    Available {
        /// NVIDIA driver version.
        driver_version: String,
        /// One sample per GPU.
        gpus: Vec<GpuSample>,
    },
    /// NVML could not be used.
    Unavailable {
        /// Why, in words (e.g. "no NVIDIA driver: libnvidia-ml.so not found").
        reason: String,
    },
}

/// The node's telemetry source, opened once and sampled as often as wanted.
pub struct TelemetrySource {
    nvml: Result<Nvml, String>,
}

impl std::fmt::Debug for TelemetrySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetrySource")
            .field("nvml", &self.nvml.is_ok())
            .finish()
    }
}

impl TelemetrySource {
    /// Loads NVML; never fails — a missing driver shows up in every reading instead.
    pub fn open() -> Self {
        let nvml = Nvml::init().map_err(|e| match e {
            nvml_wrapper::error::NvmlError::LibloadingError(_) => {
                "no NVIDIA driver: libnvidia-ml.so could not be loaded".to_owned()
            }
            nvml_wrapper::error::NvmlError::DriverNotLoaded => {
                "no NVIDIA driver: the kernel driver is not loaded".to_owned()
            }
            other => format!("NVML unavailable: {other}"),
        });
        if let Err(reason) = &nvml {
            tracing::info!(%reason, "GPU telemetry unavailable");
        }
        Self { nvml }
    }

    /// Reads every GPU now.
    pub fn sample(&self) -> GpuTelemetry {
        let nvml = match &self.nvml {
            Ok(n) => n,
            Err(reason) => {
                return GpuTelemetry::Unavailable {
                    reason: reason.clone(),
                };
            }
        };
        let count = match nvml.device_count() {
            Ok(c) => c,
            Err(e) => {
                return GpuTelemetry::Unavailable {
                    reason: format!("NVML device count: {e}"),
                };
            }
        };
        let gpus = (0..count)
            .filter_map(|index| {
                let d = nvml.device_by_index(index).ok()?;
                let memory = d.memory_info().ok();
                Some(GpuSample {
                    index,
                    name: d.name().unwrap_or_else(|_| "unknown".into()),
                    gpu_utilization_percent: d.utilization_rates().ok().map(|u| u.gpu),
                    memory_used_bytes: memory.as_ref().map(|m| m.used),
                    memory_total_bytes: memory.as_ref().map(|m| m.total),
                    encoder_utilization_percent: d
                        .encoder_utilization()
                        .ok()
                        .map(|u| u.utilization),
                    encoder_sessions: d.encoder_stats().ok().map(|s| s.session_count),
                    temperature_celsius: d.temperature(TemperatureSensor::Gpu).ok(),
                    power_milliwatts: d.power_usage().ok(),
                })
            })
            .collect();
        GpuTelemetry::Available {
            driver_version: nvml
                .sys_driver_version()
                .unwrap_or_else(|_| "unknown".into()),
            gpus,
        }
    }
}
