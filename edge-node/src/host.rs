//! The node's session host: one Vulkan device, one game catalogue and the chosen encoders,
//! shared by every session the node runs.

use crate::Result;
use crate::encode::{EncoderChoice, probe_chain};
use crate::game::Catalogue;
use crate::render::VulkanContext;
use crate::session::{Session, SessionConfig, SessionFrame};
use crate::video::Codec;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Runs many sessions in one process; see the module docs.
#[derive(Debug)]
pub struct SessionHost {
    vulkan: Arc<VulkanContext>,
    catalogue: Arc<Catalogue>,
    forced_encoder: Option<String>,
    encoders: Mutex<HashMap<Codec, EncoderChoice>>,
}

impl SessionHost {
    /// Opens the Vulkan device and picks the H.264 encoder (or checks `forced_encoder`).
    pub fn start(catalogue: Catalogue, forced_encoder: Option<String>) -> Result<Self> {
        let vulkan = VulkanContext::new()?;
        let host = Self {
            vulkan,
            catalogue: Arc::new(catalogue),
            forced_encoder,
            encoders: Mutex::new(HashMap::new()),
        };
        let h264_forced = host.forced_encoder.as_deref().filter(|e| *e != "vp8enc");
        let codec = if host.forced_encoder.as_deref() == Some("vp8enc") {
            Codec::Vp8
        } else {
            Codec::H264
        };
        let choice = probe_chain(
            codec,
            if codec == Codec::H264 {
                h264_forced
            } else {
                Some("vp8enc")
            },
        )?;
        host.encoders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(codec, choice);
        Ok(host)
    }

    /// The shared Vulkan device.
    pub fn vulkan(&self) -> &Arc<VulkanContext> {
        &self.vulkan
    }

    /// The games hosted.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// The encoder used for `codec`, probing the chain the first time it is asked for.
    pub fn encoder_for(&self, codec: Codec) -> Result<EncoderChoice> {
        let mut encoders = self.encoders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = encoders.get(&codec) {
            return Ok(c.clone());
        }
        let choice = probe_chain(codec, None)?;
        encoders.insert(codec, choice.clone());
        Ok(choice)
    }

    /// Starts a session of `config.game`; `on_frame` receives its encoded frames.
    pub fn start_session(
        &self,
        config: &SessionConfig,
        on_frame: impl FnMut(SessionFrame) + Send + 'static,
    ) -> Result<Session> {
        config.encoder.validate()?;
        let game = self.catalogue.start(&config.game)?;
        let encoder = self.encoder_for(config.encoder.codec)?;
        Session::start(&self.vulkan, game, &encoder.candidate, config, on_frame)
    }
}
