//! Any bytes as a player's data-channel message: the gate must drop or admit, never panic, and
//! whatever it admits must be valid input.
#![no_main]

use edge_node::input::InputState;
use edge_node::stream::protocol::{InputGate, InputLimits, PlayerMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut gate = InputGate::new(InputLimits::default());
    let mut state = InputState::default();
    if let Ok(outcome) = gate.admit(0, data)
        && let Some(PlayerMessage::Input(events)) = outcome.message
    {
        for e in events {
            assert!(state.apply(&e.event).is_ok(), "the gate admitted an invalid event: {e:?}");
        }
    }
});
