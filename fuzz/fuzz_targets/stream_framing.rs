//! STUN, TURN and ChannelData over a byte stream (TCP, TLS) as a connection takes them:
//! the input after its first byte is the stream, cut into reads of 1 to 256 bytes (the
//! first byte seeds the cuts); what was read is framed (`turn::stream::next_frame`),
//! and every whole frame goes where the connection sends it: ChannelData and TURN
//! requests to the connection's TURN core (in stream mode, which pads ChannelData to
//! the client), other STUN to the Binding answerer. No panics; frames lie within what
//! was read and within the longest frame; what the core asks to send lies in the
//! buffer; a broken stream ends. Run with `cargo fuzz run stream_framing` in `fuzz/`.
#![no_main]

use confnode::stun::{Verdict, answer};
use confnode::turn::server::{Action, Clock, TurnCore};
use confnode::turn::stream::{Frame, MAX_FRAME, STUN_HEADER, next_frame};
use libfuzzer_sys::fuzz_target;

mod common;
use common::{Relays, client};

/// Room behind a frame for an answer written in place (as the connection keeps).
const ANSWER_ROOM: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, mut rest)) = data.split_first() else {
        return;
    };
    let mut core: Option<TurnCore> = None;
    let mut relays = Relays::default();
    let clock = Clock {
        mono_ms: 10_000_000,
        unix: 1_750_000_000,
    };
    let who = client(0);
    let mut read: Vec<u8> = Vec::new();
    let mut work = vec![0u8; MAX_FRAME + ANSWER_ROOM];
    let mut cut = seed;
    while !rest.is_empty() {
        cut = cut.wrapping_mul(31).wrapping_add(7);
        let n = (usize::from(cut) + 1).min(rest.len());
        read.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        let mut pos = 0;
        loop {
            let avail = &read[pos..];
            let (total, length) = match next_frame(avail) {
                Frame::Partial { need } => {
                    assert!(need == 0 || (need > avail.len() && need <= MAX_FRAME));
                    break;
                }
                Frame::Stun { total } => (total, total - STUN_HEADER),
                Frame::ChannelData { total, length } => (total, length),
                Frame::Broken => return, // the connection ends
            };
            assert!(total <= avail.len() && total <= MAX_FRAME && length < total);
            work[..total].copy_from_slice(&avail[..total]);
            pos += total;
            let action = if work[0] >= 0x40 {
                match core.as_mut() {
                    Some(core) => {
                        core.handle_client(clock, who, &mut work, 4 + length, &mut relays)
                    }
                    None => continue, // no TURN yet: nowhere to relay
                }
            } else if TurnCore::is_turn_method(&work[..total]) {
                let core = core.get_or_insert_with(|| common::core(true, 0));
                core.handle_client(clock, who, &mut work, total, &mut relays)
            } else {
                if let Verdict::Reply(n) = answer(&mut work, total, who.addr) {
                    assert!(n <= work.len());
                }
                continue;
            };
            match action {
                Action::Reply(n) => assert!(n <= work.len()),
                Action::ToPeer { start, len, .. } | Action::ToClient { start, len, .. } => {
                    assert!(start + len <= work.len());
                }
                Action::Drop(_) => {}
            }
        }
        read.drain(..pos);
        assert!(read.len() < MAX_FRAME, "never more than a frame held back");
    }
});
