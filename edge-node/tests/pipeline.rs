//! The render → encode pipeline against the real thing: Vulkan (lavapipe without a GPU) and
//! GStreamer. Nothing here is skipped when a component is missing: the test fails and says so.

use edge_node::Error;
use edge_node::encode::{EncoderSettings, probe_chain};
use edge_node::game::{Arena, Catalogue};
use edge_node::host::SessionHost;
use edge_node::input::InputEvent;
use edge_node::offline::OfflineSession;
use edge_node::record::{RecordRequest, record};
use edge_node::render::VulkanContext;
use edge_node::session::SessionConfig;
use edge_node::video::{Codec, VideoMode};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn mode(w: u32, h: u32, fps: u32) -> VideoMode {
    VideoMode::new(w, h, fps).unwrap()
}

/// Centre of the pixels painted in the player's colour, or None when there are none.
fn player_centroid(rgba: &[u8], width: usize) -> Option<(f64, f64)> {
    let target = Arena::PLAYER_COLOR.map(|c| (c * 255.0).round() as i32);
    let (mut sx, mut sy, mut n) = (0.0, 0.0, 0u64);
    for (i, px) in rgba.chunks_exact(4).enumerate() {
        let close = (0..3).all(|c| (i32::from(px[c]) - target[c]).abs() <= 2);
        if close {
            sx += (i % width) as f64;
            sy += (i / width) as f64;
            n += 1;
        }
    }
    (n > 50).then(|| (sx / n as f64, sy / n as f64))
}

#[test]
fn frames_are_not_blank_and_consecutive_frames_differ() {
    let vulkan = VulkanContext::new().expect("Vulkan must load (install mesa-vulkan-drivers)");
    let m = mode(640, 360, 30);
    let mut s = OfflineSession::new(&vulkan, &Catalogue::default(), "arena", m).unwrap();
    let mut frames = Vec::new();
    for _ in 0..3 {
        frames.push(s.next_frame(|f| f.data.to_vec()).unwrap().0);
    }
    for f in &frames {
        assert_eq!(f.len(), 640 * 360 * 4);
        let distinct: std::collections::HashSet<&[u8]> = f.chunks_exact(4).collect();
        assert!(
            distinct.len() > 10,
            "frame looks blank: {} colours",
            distinct.len()
        );
    }
    let changed = |a: &[u8], b: &[u8]| {
        a.chunks_exact(4)
            .zip(b.chunks_exact(4))
            .filter(|(x, y)| x != y)
            .count()
    };
    assert!(
        changed(&frames[0], &frames[1]) > 100,
        "frame 1 equals frame 0"
    );
    assert!(
        changed(&frames[1], &frames[2]) > 100,
        "frame 2 equals frame 1"
    );
}

#[test]
fn an_input_event_moves_the_player_on_screen() {
    let vulkan = VulkanContext::new().unwrap();
    let (w, h) = (640u32, 360u32);
    let mut s =
        OfflineSession::new(&vulkan, &Catalogue::default(), "arena", mode(w, h, 30)).unwrap();
    let before = s
        .next_frame(|f| player_centroid(f.data, w as usize))
        .unwrap()
        .0
        .expect("player visible");
    s.input(&InputEvent::Key {
        code: "ArrowRight".into(),
        down: true,
    })
    .unwrap();
    let mut after = before;
    for _ in 0..15 {
        after = s
            .next_frame(|f| player_centroid(f.data, w as usize))
            .unwrap()
            .0
            .expect("player visible");
    }
    // 15 frames at 30 fps = 0.5 s at 0.5 arena widths/s = 0.25 of the free width.
    let side = 0.08 * h as f64;
    let expected = 0.25 * (w as f64 - side);
    let moved = after.0 - before.0;
    assert!(
        (moved - expected).abs() < 3.0,
        "player moved {moved:.1} px, expected {expected:.1}"
    );
    assert!(
        (after.1 - before.1).abs() < 0.5,
        "player must not move vertically"
    );
}

/// Runs `description` (a gst-launch line ending in `appsink name=sink`) and returns its samples.
fn pull_all(description: &str) -> Vec<gst::Sample> {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(description)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    sink.set_property("sync", false);
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut samples = Vec::new();
    while let Some(s) = sink.try_pull_sample(gst::ClockTime::from_seconds(10)) {
        samples.push(s);
    }
    let bus = pipeline.bus().unwrap();
    if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        panic!("{description}: {msg:?}");
    }
    pipeline.set_state(gst::State::Null).unwrap();
    samples
}

fn record_arena(
    dir: &std::path::Path,
    file: &str,
    codec: Codec,
    frames: u64,
    keyframes_at: Vec<u64>,
) -> (std::path::PathBuf, edge_node::record::RecordReport) {
    let vulkan = VulkanContext::new().unwrap();
    let choice = probe_chain(codec, None).unwrap();
    let m = mode(480, 272, 30);
    let mut settings = EncoderSettings::for_mode(m, codec);
    settings.gop_frames = 1000; // only the first frame and the requested ones are keyframes
    let out = dir.join(file);
    let req = RecordRequest {
        game: "arena".into(),
        settings,
        frames,
        keyframes_at,
        input: vec![],
        out: out.clone(),
    };
    let report = record(&vulkan, &Catalogue::default(), &choice.candidate, &req).unwrap();
    (out, report)
}

#[test]
fn a_recording_decodes_to_the_requested_size_and_frame_count_with_keyframes_where_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (path, report) = record_arena(dir.path(), "arena.h264", Codec::H264, 45, vec![20]);
    assert_eq!(report.frames, 45);
    assert_eq!(report.keyframes, [0, 20]);

    let decoded = pull_all(&format!(
        "filesrc location={} ! h264parse ! avdec_h264 ! video/x-raw,format=I420 ! appsink name=sink",
        path.display()
    ));
    assert_eq!(decoded.len(), 45, "decoded frame count");
    let caps = decoded[0].caps().unwrap().structure(0).unwrap().to_owned();
    assert_eq!(caps.get::<i32>("width").unwrap(), 480);
    assert_eq!(caps.get::<i32>("height").unwrap(), 272);

    // The file itself, parsed independently: access unit 20 is an IDR, 19 and 21 are not.
    let units = pull_all(&format!(
        "filesrc location={} ! h264parse ! video/x-h264,alignment=au,stream-format=byte-stream ! appsink name=sink",
        path.display()
    ));
    let key: Vec<bool> = units
        .iter()
        .map(|s| {
            !s.buffer()
                .unwrap()
                .flags()
                .contains(gst::BufferFlags::DELTA_UNIT)
        })
        .collect();
    assert_eq!(key.len(), 45);
    assert!(
        key[0] && key[20] && !key[19] && !key[21],
        "keyframes at {:?}",
        key.iter()
            .enumerate()
            .filter(|(_, k)| **k)
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    );
    let profile = units[0]
        .caps()
        .unwrap()
        .structure(0)
        .unwrap()
        .get::<String>("profile")
        .unwrap();
    assert_eq!(profile, "constrained-baseline");
}

#[test]
fn mp4_and_webm_recordings_play() {
    let dir = tempfile::tempdir().unwrap();
    let (mp4, _) = record_arena(dir.path(), "arena.mp4", Codec::H264, 30, vec![]);
    let frames = pull_all(&format!(
        "filesrc location={} ! qtdemux ! h264parse ! avdec_h264 ! appsink name=sink",
        mp4.display()
    ));
    assert_eq!(frames.len(), 30);
    let (webm, report) = record_arena(dir.path(), "arena.webm", Codec::Vp8, 30, vec![10]);
    assert_eq!(report.encoder, "vp8enc");
    let frames = pull_all(&format!(
        "filesrc location={} ! matroskademux ! vp8dec ! appsink name=sink",
        webm.display()
    ));
    assert_eq!(frames.len(), 30);
}

#[test]
fn without_nvenc_the_chain_picks_x264_and_says_why_nvenc_was_skipped() {
    gst::init().unwrap();
    let choice = probe_chain(Codec::H264, None).unwrap();
    if gst::ElementFactory::find("nvh264enc").is_none() {
        assert_eq!(choice.candidate.element, "x264enc");
        let nv = choice
            .skipped
            .iter()
            .find(|s| s.element == "nvh264enc")
            .expect("nvh264enc listed as skipped");
        assert!(nv.reason.contains("not registered"), "{}", nv.reason);
    } else if choice.candidate.element != "nvh264enc" {
        // A GPU without NVENC (H100/H200): the element exists but cannot encode.
        let nv = choice
            .skipped
            .iter()
            .find(|s| s.element == "nvh264enc")
            .expect("nvh264enc listed as skipped");
        assert!(!nv.reason.is_empty());
    }
}

#[test]
fn bad_requests_get_clear_errors() {
    assert!(matches!(
        VideoMode::new(0, 720, 30),
        Err(Error::InvalidArgument { field: "width", .. })
    ));
    assert!(matches!(
        VideoMode::new(1279, 720, 30),
        Err(Error::InvalidArgument { field: "width", .. })
    ));
    assert!(matches!(
        VideoMode::new(1280, 4100, 30),
        Err(Error::InvalidArgument {
            field: "height",
            ..
        })
    ));
    assert!(matches!(
        VideoMode::new(1280, 720, 0),
        Err(Error::InvalidArgument { field: "fps", .. })
    ));
    assert!(matches!(
        probe_chain(Codec::H264, Some("h265enc")),
        Err(Error::InvalidArgument {
            field: "encoder",
            ..
        })
    ));

    let host = SessionHost::start(Catalogue::default(), None).unwrap();
    let config = SessionConfig {
        id: "bad".into(),
        game: "no-such-game".into(),
        encoder: EncoderSettings::for_mode(mode(320, 240, 30), Codec::H264),
    };
    match host.start_session(&config, |_| {}) {
        Err(Error::UnknownGame { name, available }) => {
            assert_eq!(name, "no-such-game");
            assert!(available.contains("arena"));
        }
        other => panic!("expected UnknownGame, got {other:?}"),
    }
}

#[test]
fn the_cli_rejects_bad_input_without_panicking() {
    let bin = env!("CARGO_BIN_EXE_edge-node");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.mp4");
    let out = out.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["record", "--width", "0", "--out", out], "invalid width"),
        (&["record", "--width", "641", "--out", out], "odd"),
        (
            &["record", "--height", "5000", "--out", out],
            "invalid height",
        ),
        (&["record", "--fps", "0", "--out", out], "invalid fps"),
        (
            &[
                "record",
                "--game",
                "tetris",
                "--seconds",
                "0.1",
                "--out",
                out,
            ],
            "unknown game",
        ),
        (
            &["record", "--encoder", "fooenc", "--out", out],
            "invalid encoder",
        ),
    ];
    for (args, expected) in cases {
        let o = std::process::Command::new(bin).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
}

#[test]
fn many_sessions_run_side_by_side_and_a_keyframe_request_is_honoured() {
    let host = SessionHost::start(Catalogue::default(), None).unwrap();
    let keyframes: Arc<Mutex<Vec<Vec<u64>>>> = Arc::new(Mutex::new(vec![Vec::new(); 3]));
    let sessions: Vec<_> = (0..3)
        .map(|i| {
            let mut settings = EncoderSettings::for_mode(mode(320, 240, 30), Codec::H264);
            settings.gop_frames = 10_000;
            let config = SessionConfig {
                id: format!("s{i}"),
                game: "arena".into(),
                encoder: settings,
            };
            let k = Arc::clone(&keyframes);
            host.start_session(&config, move |f| {
                assert!(
                    f.timings.encode_ms > 0.0 && f.timings.total_ms >= f.timings.encode_ms,
                    "frame {} has no timings: {:?}",
                    f.number,
                    f.timings
                );
                if f.encoded.keyframe {
                    k.lock().unwrap()[i].push(f.number);
                }
            })
            .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    sessions[1].request_keyframe();
    sessions[1]
        .send_input(InputEvent::Key {
            code: "KeyD".into(),
            down: true,
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        sessions[0]
            .send_input(InputEvent::GamepadAxis {
                index: 99,
                value: 0.0
            })
            .is_err()
    );
    let stats: Vec<_> = sessions.into_iter().map(|s| s.stop().unwrap()).collect();
    for (i, s) in stats.iter().enumerate() {
        // 1.4 s at 30 fps is 42 frames; even a loaded CI machine makes well over 15.
        assert!(s.frames_encoded >= 15, "session {i}: {s:?}");
        assert_eq!(
            s.frames_encoded, s.frames_rendered,
            "session {i} lost frames inside the encoder"
        );
    }
    assert_eq!(stats[1].input_events, 1);
    let k = keyframes.lock().unwrap();
    assert_eq!(
        k[0].len(),
        1,
        "session 0 only starts with a keyframe: {:?}",
        k[0]
    );
    assert_eq!(
        k[1].len(),
        2,
        "session 1 got its requested keyframe: {:?}",
        k[1]
    );
}

#[test]
fn frames_can_be_submitted_ahead_and_come_back_in_order() {
    let vulkan = VulkanContext::new().unwrap();
    let mut s =
        OfflineSession::new(&vulkan, &Catalogue::default(), "arena", mode(320, 240, 30)).unwrap();
    // Reference: the same three frames made one at a time.
    let mut reference =
        OfflineSession::new(&vulkan, &Catalogue::default(), "arena", mode(320, 240, 30)).unwrap();
    let expected: Vec<Vec<u8>> = (0..3)
        .map(|_| reference.next_frame(|f| f.data.to_vec()).unwrap().0)
        .collect();
    let a = s.submit_next().unwrap();
    let b = s.submit_next().unwrap();
    let c = s.submit_next().unwrap();
    assert!(
        s.submit_next().is_err(),
        "a fourth frame in flight must be refused, not overwrite one"
    );
    for (pending, want) in [a, b, c].into_iter().zip(&expected) {
        let got = s.read(pending, |f| f.data.to_vec()).unwrap().0;
        assert!(
            got == *want,
            "a frame read back after later submissions must be the frame it was"
        );
    }
}
