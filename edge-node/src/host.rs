//! The node's session host: one Vulkan device, the games it hosts (built-in ones from the
//! [`Catalogue`], packaged ones from the games directory) and the chosen encoders, shared by
//! every session the node runs.

use crate::encode::{EncoderChoice, probe_chain};
use crate::game::Catalogue;
use crate::render::VulkanContext;
use crate::runtime::RuntimeConfig;
use crate::runtime::store::InstalledGame;
use crate::session::{Session, SessionConfig, SessionFrame};
use crate::video::Codec;
use crate::{Error, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The version built-in games advertise: they ship with the node.
pub const BUILT_IN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A game this node hosts, as it advertises it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostedGame {
    /// What players launch.
    pub id: String,
    /// Its version.
    pub version: String,
    /// Display name.
    pub name: String,
    /// Modes it plays in (`WIDTHxHEIGHT@FPS`); empty for built-in games, which take any mode.
    pub modes: Vec<String>,
    /// True for a studio's packaged build, false for a built-in game.
    pub packaged: bool,
}

/// Runs many sessions in one process; see the module docs.
#[derive(Debug)]
pub struct SessionHost {
    vulkan: Arc<VulkanContext>,
    catalogue: Arc<Catalogue>,
    packaged: Vec<InstalledGame>,
    runtime: Option<RuntimeConfig>,
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
            packaged: Vec::new(),
            runtime: None,
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

    /// The built-in games hosted.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// Hosts packaged games too: `games` (from the games directory) run in worlds made under
    /// `runtime`, whose leftovers from an earlier run are removed now.
    pub fn with_packaged(
        mut self,
        games: Vec<InstalledGame>,
        runtime: RuntimeConfig,
    ) -> Result<Self> {
        runtime.prepare()?;
        self.packaged = games
            .into_iter()
            .filter(|g| {
                let clash = self.catalogue.ids().contains(&g.manifest.id);
                if clash {
                    tracing::warn!(id = %g.manifest.id, "a packaged game may not take a built-in game's id; skipped");
                }
                !clash
            })
            .collect();
        self.runtime = Some(runtime);
        Ok(self)
    }

    /// Every game hosted, built-in first, then packaged, each sorted by id.
    pub fn games(&self) -> Vec<HostedGame> {
        let built_in = self.catalogue.ids().into_iter().map(|id| HostedGame {
            name: id.clone(),
            id,
            version: BUILT_IN_VERSION.into(),
            modes: Vec::new(),
            packaged: false,
        });
        let packaged = self.packaged.iter().map(|g| HostedGame {
            id: g.manifest.id.clone(),
            version: g.manifest.version.clone(),
            name: g.manifest.name.clone(),
            modes: g
                .manifest
                .modes
                .iter()
                .map(|m| format!("{}x{}@{}", m.width, m.height, m.fps))
                .collect(),
            packaged: true,
        });
        built_in.chain(packaged).collect()
    }

    /// True when `game` is a packaged game (runs in its own world, captured).
    pub fn is_packaged(&self, game: &str) -> bool {
        self.packaged.iter().any(|g| g.manifest.id == game)
    }

    /// Checks that `game` is hosted here and playable at `mode`.
    pub fn check_game(&self, game: &str, mode: crate::video::VideoMode) -> Result<()> {
        if self.catalogue.ids().iter().any(|id| id == game) {
            return Ok(());
        }
        match self.packaged.iter().find(|g| g.manifest.id == game) {
            Some(g) if g.manifest.supports(mode) => Ok(()),
            Some(g) => Err(Error::invalid(
                "mode",
                format!(
                    "{} plays in {}; not {}x{}@{}",
                    g.manifest.id,
                    self.games()
                        .into_iter()
                        .find(|h| h.id == game)
                        .map(|h| h.modes.join(", "))
                        .unwrap_or_default(),
                    mode.width,
                    mode.height,
                    mode.fps
                ),
            )),
            None => Err(Error::UnknownGame {
                name: game.chars().take(64).collect(),
                available: self
                    .games()
                    .iter()
                    .map(|g| g.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
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

    /// Starts a session of `config.game` without sound; `on_frame` receives its encoded frames.
    pub fn start_session(
        &self,
        config: &SessionConfig,
        on_frame: impl FnMut(SessionFrame) + Send + 'static,
    ) -> Result<Session> {
        self.start_session_with_audio(config, on_frame, None)
    }

    /// Starts a session of `config.game`; `on_frame` receives its encoded frames and `audio`
    /// (when given, and when the game has sound) its Opus packets.
    pub fn start_session_with_audio(
        &self,
        config: &SessionConfig,
        on_frame: impl FnMut(SessionFrame) + Send + 'static,
        audio: crate::session::AudioOut,
    ) -> Result<Session> {
        config.encoder.validate()?;
        self.check_game(&config.game, config.encoder.mode)?;
        let encoder = self.encoder_for(config.encoder.codec)?;
        if let (Some(game), Some(runtime)) = (
            self.packaged.iter().find(|g| g.manifest.id == config.game),
            &self.runtime,
        ) {
            return Session::start_packaged(
                runtime,
                game,
                &encoder.candidate,
                config,
                on_frame,
                audio.filter(|_| game.manifest.audio),
            );
        }
        let game = self.catalogue.start(&config.game)?;
        Session::start(
            &self.vulkan,
            game,
            &encoder.candidate,
            config,
            on_frame,
            audio,
        )
    }
}
