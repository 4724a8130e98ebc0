//! The active speaker of a room, from the audio level that publishers put in each audio
//! packet (RFC 6464, `urn:ietf:params:rtp-hdrext:ssrc-audio-level`), sans-IO.
//!
//! - The data plane counts, per audio track, the packets whose level says someone
//!   speaks ([`Loudness`]): no allocation, two additions per packet.
//! - Once per window (a second) the control plane takes those counts for every
//!   publisher of a room and feeds them to the room's [`Speakers`], which names a new
//!   speaker only when someone spoke through two whole windows while the current one
//!   did not, or spoke much more: a cough or a door does not switch the speaker, and a
//!   pause for breath does not drop one.

/// Levels (in -dBov; 0 is the loudest, 127 silence) at or under this count as speech.
/// Chrome's levels for a voice at a normal distance are about 20–45; room noise is
/// rarely under 60.
pub(crate) const SPEECH_DBOV: u8 = 55;
/// Share of a window's packets that must carry speech for the publisher to count as
/// speaking in it: half (Opus sends 50 packets a second).
const SPEAKING_SHARE_PERCENT: u32 = 50;
/// Windows a newcomer must have spoken through, in a row, to become the speaker.
const WINDOWS_TO_SWITCH: usize = 2;
/// A speaker who still speaks loses the floor only to someone who spoke this many
/// times as many packets over the same windows.
const OVERTAKE_FACTOR: u32 = 2;

/// Speech in one audio track since the last [`Loudness::take`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Loudness {
    pub(crate) packets: u32,
    pub(crate) speech: u32,
}

impl Loudness {
    /// One packet with `level` (-dBov) and the voice-activity flag.
    pub(crate) fn add(&mut self, voice_flag: bool, level: u8) {
        self.packets = self.packets.saturating_add(1);
        // The flag, where the sender sets it, says more than the level; a level that
        // loud is speech whatever the flag.
        if level <= SPEECH_DBOV && (voice_flag || level <= SPEECH_DBOV / 2) {
            self.speech = self.speech.saturating_add(1);
        }
    }

    /// The counts so far, starting a new window.
    pub(crate) fn take(&mut self) -> Loudness {
        std::mem::take(self)
    }

    fn is_speaking(&self) -> bool {
        self.packets > 0 && self.speech * 100 >= self.packets * SPEAKING_SHARE_PERCENT
    }
}

/// One room's speaker, from windows of [`Loudness`] per participant.
#[derive(Debug, Default)]
pub(crate) struct Speakers {
    /// Participant → its last windows, newest last (at most [`WINDOWS_TO_SWITCH`]).
    history: Vec<(String, Vec<Loudness>)>,
    current: Option<String>,
}

impl Speakers {
    /// The speaker now, if anyone spoke yet.
    pub(crate) fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Takes one window: the loudness of every participant that publishes audio (one
    /// missing from it has stopped). Returns the new speaker when it changed.
    pub(crate) fn window(&mut self, heard: &[(String, Loudness)]) -> Option<&str> {
        self.history
            .retain(|(p, _)| heard.iter().any(|(h, _)| h == p));
        for (participant, loudness) in heard {
            let windows = match self.history.iter_mut().find(|(p, _)| p == participant) {
                Some((_, w)) => w,
                None => {
                    self.history.push((participant.clone(), Vec::new()));
                    match self.history.last_mut() {
                        Some((_, w)) => w,
                        None => continue,
                    }
                }
            };
            if windows.len() == WINDOWS_TO_SWITCH {
                windows.remove(0);
            }
            windows.push(*loudness);
        }
        if self
            .current
            .as_ref()
            .is_some_and(|c| !self.history.iter().any(|(p, _)| p == c))
        {
            self.current = None;
        }
        let candidate = self
            .history
            .iter()
            .filter(|(_, w)| w.len() == WINDOWS_TO_SWITCH && w.iter().all(Loudness::is_speaking))
            .max_by_key(|(_, w)| speech(w))?;
        if self.current.as_deref() == Some(candidate.0.as_str()) {
            return None;
        }
        let current = self
            .current
            .as_ref()
            .and_then(|c| self.history.iter().find(|(p, _)| p == c));
        let switch = match current {
            None => true,
            Some((_, w)) => {
                let still = w.last().is_some_and(Loudness::is_speaking);
                !still || speech(&candidate.1) >= speech(w).saturating_mul(OVERTAKE_FACTOR)
            }
        };
        if !switch {
            return None;
        }
        self.current = Some(candidate.0.clone());
        self.current.as_deref()
    }
}

fn speech(windows: &[Loudness]) -> u32 {
    windows.iter().map(|l| l.speech).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second of Opus (50 packets), `speech` of them at a speaking level.
    fn second(speech: u32) -> Loudness {
        let mut l = Loudness::default();
        for i in 0..50 {
            if i < speech {
                l.add(true, 30);
            } else {
                l.add(false, 100);
            }
        }
        l.take()
    }

    fn window(s: &mut Speakers, a: u32, b: u32) -> Option<String> {
        s.window(&[("a".into(), second(a)), ("b".into(), second(b))])
            .map(str::to_owned)
    }

    #[test]
    fn levels_count_as_speech_below_the_threshold() {
        let mut l = Loudness::default();
        l.add(true, 30);
        l.add(false, 10); // loud enough without the flag
        l.add(false, 40); // flag off, not that loud
        l.add(true, 90); // noise
        assert_eq!(
            l.take(),
            Loudness {
                packets: 4,
                speech: 2
            }
        );
        assert_eq!(l, Loudness::default());
    }

    #[test]
    fn someone_who_speaks_two_seconds_becomes_the_speaker() {
        let mut s = Speakers::default();
        assert_eq!(window(&mut s, 40, 0), None, "one second is not enough");
        assert_eq!(window(&mut s, 40, 0).as_deref(), Some("a"));
        assert_eq!(window(&mut s, 40, 0), None, "no change, no news");
        assert_eq!(s.current(), Some("a"));
    }

    #[test]
    fn a_cough_does_not_switch_and_a_pause_does_not_drop() {
        let mut s = Speakers::default();
        window(&mut s, 40, 0);
        window(&mut s, 40, 0);
        // b coughs for a second, a pauses for breath meanwhile.
        assert_eq!(window(&mut s, 0, 45), None);
        assert_eq!(window(&mut s, 40, 0), None);
        assert_eq!(s.current(), Some("a"));
        // Silence keeps the last speaker.
        assert_eq!(window(&mut s, 0, 0), None);
        assert_eq!(s.current(), Some("a"));
    }

    #[test]
    fn the_floor_passes_when_the_speaker_stops_or_is_drowned_out() {
        let mut s = Speakers::default();
        window(&mut s, 40, 0);
        window(&mut s, 40, 0);
        window(&mut s, 0, 40);
        assert_eq!(window(&mut s, 0, 40).as_deref(), Some("b"));
        // Both speak: a needs twice b's speech to take over.
        assert_eq!(window(&mut s, 40, 30), None);
        assert_eq!(window(&mut s, 40, 30), None);
        assert_eq!(s.current(), Some("b"));
    }

    #[test]
    fn a_speaker_who_stops_publishing_is_forgotten() {
        let mut s = Speakers::default();
        window(&mut s, 40, 0);
        window(&mut s, 40, 0);
        assert_eq!(s.window(&[("b".into(), second(0))]), None);
        assert_eq!(s.current(), None);
    }
}
