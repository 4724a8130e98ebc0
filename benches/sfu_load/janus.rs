//! The same load against Janus (Debian's `janus`, videoroom plugin, HTTP API), with
//! `SFU_LOAD_JANUS=1`.
//!
//! Janus leaves loopback interfaces out of its ICE candidates, so it runs in a network
//! namespace made for the run, reached over a veth pair (10.201.N.1 on the bench's
//! side, .2 in the namespace; nothing is routed further), pinned to the server's core.
//! The webrtc-rs peers gather candidates on the veth address only. Signalling is
//! Janus's own: a session and a videoroom handle per peer connection, a publisher joins
//! and publishes its offer, a subscriber joins with `streams: [{feed}, ...]` and
//! answers Janus's offer with `start`. Events are read by long poll.
//!
//! Janus has no packet counters of its own here: its egress is what the subscribers
//! received in the window, its ingress the publishers' schedule.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;

use super::burst::BurstSocket;
use super::{
    Proc, Run, SERVER_CORE, Scenario, Source, add_tracks, common, layer_pps, own_cpu, peers,
    publishers_runtime, runtime, send_media, shared_stats, subscriber_pc,
};

const JANUS_PORT: u16 = 8088;
const PLUGINS: &str = "/usr/lib/x86_64-linux-gnu/janus";
const ROOM: u64 = 4242;

/// A network namespace with a veth pair to it; deleted (the pair with it) when dropped.
pub(super) struct Netns {
    pub(super) name: String,
    /// The bench's address on the veth (the peers' candidates).
    pub(super) host: Ipv4Addr,
    /// The server's address inside.
    pub(super) inside: Ipv4Addr,
}

/// Client addresses on the bench's side start at .10 of the veth's /24.
const FIRST_CLIENT: usize = 10;

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("run `ip` (iproute2)");
    assert!(status.success(), "ip {args:?} failed: {status}");
}

impl Netns {
    /// A namespace, and `clients` more addresses on the bench's side for the room API
    /// calls (the node allows 30 joins a minute per address).
    pub(super) fn create(clients: usize) -> Netns {
        assert!(clients + FIRST_CLIENT < 255, "at most 244 clients");
        let id = std::process::id();
        let name = format!("cnl-sfuload-{id}");
        let net = (id % 250) as u8;
        let (outer, inner) = (format!("cnls{id}a"), format!("cnls{id}b"));
        let host = Ipv4Addr::new(10, 201, net, 1);
        let inside = Ipv4Addr::new(10, 201, net, 2);
        ip(&["netns", "add", &name]);
        let ns = Netns { name, host, inside };
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{host}/24"), "dev", &outer]);
        for i in 0..clients {
            let client = ns.client(i);
            ip(&["addr", "add", &format!("{client}/32"), "dev", &outer]);
        }
        ip(&["link", "set", &outer, "up"]);
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        exec(&["addr", "add", &format!("{inside}/24"), "dev", &inner]);
        exec(&["link", "set", &inner, "up"]);
        exec(&["link", "set", "lo", "up"]);
        ns
    }
}

impl Netns {
    /// Client address `i` on the bench's side.
    pub(super) fn client(&self, i: usize) -> Ipv4Addr {
        let [a, b, c, _] = self.host.octets();
        Ipv4Addr::new(a, b, c, (FIRST_CLIENT + i) as u8)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Janus's configuration: the videoroom plugin and the HTTP transport only, sessions
/// that never time out, RTP ports within one range.
fn write_config(dir: &Path) {
    let general = format!(
        "general: {{\n configs_folder = \"{d}\"\n plugins_folder = \"{PLUGINS}/plugins\"\n \
         transports_folder = \"{PLUGINS}/transports\"\n events_folder = \"{PLUGINS}/events\"\n \
         loggers_folder = \"{PLUGINS}/loggers\"\n debug_level = 3\n session_timeout = 0\n}}\n\
         media: {{\n rtp_port_range = \"30000-39999\"\n}}\n\
         plugins: {{\n disable = \"libjanus_audiobridge.so,libjanus_duktape.so,\
         libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,\
         libjanus_sip.so,libjanus_streaming.so,libjanus_textroom.so,libjanus_videocall.so,\
         libjanus_voicemail.so\"\n}}\n\
         transports: {{\n disable = \"libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,\
         libjanus_rabbitmq.so,libjanus_websockets.so\"\n}}\n\
         events: {{\n broadcast = false\n}}\n\
         loggers: {{\n disable = \"libjanus_jsonlog.so\"\n}}\n",
        d = dir.display()
    );
    let http = format!(
        "general: {{\n json = \"compact\"\n base_path = \"/janus\"\n http = true\n \
         port = {JANUS_PORT}\n https = false\n}}\nadmin: {{\n admin_http = false\n}}\n"
    );
    for (name, text) in [
        ("janus.jcfg", general.as_str()),
        ("janus.transport.http.jcfg", http.as_str()),
        ("janus.plugin.videoroom.jcfg", "general: {\n}\n"),
    ] {
        std::fs::write(dir.join(name), text).expect("write Janus's configuration");
    }
}

/// POSTs a Janus API request to `path`; its answer.
fn post(addr: SocketAddr, path: &str, mut body: Value) -> Value {
    body["transaction"] = json!(format!("t{}", rand_id()));
    let r = common::http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "Janus {path}: {}", r.body);
    let v = json_body(&r).expect("Janus JSON");
    assert_ne!(v["janus"], "error", "Janus {path}: {v}");
    v
}

/// The JSON of an answer, whose body Janus may send chunked.
fn json_body(r: &common::HttpResponse) -> Option<Value> {
    let chunked = r
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if !chunked {
        return serde_json::from_str(&r.body).ok();
    }
    let mut body = String::new();
    let mut rest = r.body.as_str();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            break;
        }
        body.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
    serde_json::from_str(&body).ok()
}

fn rand_id() -> u64 {
    super::load::Rng::from_os().next_u64()
}

/// A Janus session with one videoroom handle.
#[derive(Clone, Copy)]
struct Handle {
    addr: SocketAddr,
    session: u64,
    handle: u64,
}

impl Handle {
    fn attach(addr: SocketAddr) -> Handle {
        let session = post(addr, "/janus", json!({"janus": "create"}))["data"]["id"]
            .as_u64()
            .expect("session id");
        let handle = post(
            addr,
            &format!("/janus/{session}"),
            json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
        )["data"]["id"]
            .as_u64()
            .expect("handle id");
        Handle {
            addr,
            session,
            handle,
        }
    }

    /// Sends a videoroom request (with `jsep` if given); Janus's immediate answer.
    fn message(&self, body: Value, jsep: Option<Value>) -> Value {
        let mut req = json!({"janus": "message", "body": body});
        if let Some(jsep) = jsep {
            req["jsep"] = jsep;
        }
        post(
            self.addr,
            &format!("/janus/{}/{}", self.session, self.handle),
            req,
        )
    }

    /// Long-polls the session until an event of this handle satisfies `want`.
    fn wait(&self, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let r = common::http(
                self.addr,
                "GET",
                &format!("/janus/{}?maxev=1", self.session),
                &[],
                b"",
            );
            let Some(v) = json_body(&r) else {
                continue;
            };
            assert_ne!(v["janus"], "error", "Janus event: {v}");
            if v["sender"].as_u64() == Some(self.handle) && want(&v) {
                return v;
            }
        }
        panic!("Janus sent no awaited event within 15 s");
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Joins as publisher `p`, publishes, waits until connected; its feed id, tracks and
/// peer connection.
async fn publish(
    host: Ipv4Addr,
    addr: SocketAddr,
    p: usize,
    video: bool,
) -> (u64, (super::Tracks, BurstSocket), Arc<RTCPeerConnection>) {
    let h = blocking(move || Handle::attach(addr)).await;
    let feed = blocking(move || {
        h.message(
            json!({"request": "join", "ptype": "publisher", "room": ROOM, "display": format!("p{p}")}),
            None,
        );
        h.wait(|v| v["plugindata"]["data"]["videoroom"] == "joined")["plugindata"]["data"]["id"]
            .as_u64()
            .expect("feed id")
    })
    .await;
    let burst = BurstSocket::bind(host.into()).await;
    let pc = Arc::new(
        super::publisher_api(host, &burst)
            .new_peer_connection(RTCConfiguration::default())
            .await
            .expect("publisher peer connection"),
    );
    let (tracks, senders) = add_tracks(&pc, video).await;
    let mut state = peers::state_channel(&pc);
    let offer = pc.create_offer(None).await.expect("offer");
    let offer = peers::set_local_gathered(&pc, offer).await;
    let answer = blocking(move || {
        h.message(
            json!({"request": "publish", "audio": true, "video": video}),
            // Janus takes the first rid as the best layer unless told: ours go up.
            Some(json!({"type": "offer", "sdp": offer, "rid_order": "lmh"})),
        );
        h.wait(|v| v["jsep"].is_object())["jsep"]["sdp"]
            .as_str()
            .expect("answer sdp")
            .to_owned()
    })
    .await;
    pc.set_remote_description(RTCSessionDescription::answer(answer).expect("answer"))
        .await
        .expect("publisher remote description");
    peers::wait_connected(&mut state, "Janus publisher").await;
    peers::drain_rtcp(&senders);
    (feed, (tracks, burst), pc)
}

/// Subscribes to `feeds`, answers Janus's offer, waits until connected.
async fn subscribe(
    host: Ipv4Addr,
    addr: SocketAddr,
    feeds: Vec<u64>,
    stats: super::Shared,
    clock: (Instant, Arc<AtomicBool>),
) -> Arc<RTCPeerConnection> {
    let h = blocking(move || Handle::attach(addr)).await;
    let offer = blocking(move || {
        let streams: Vec<Value> = feeds.iter().map(|f| json!({ "feed": f })).collect();
        h.message(
            json!({"request": "join", "ptype": "subscriber", "room": ROOM, "streams": streams}),
            None,
        );
        h.wait(|v| v["jsep"].is_object())["jsep"]["sdp"]
            .as_str()
            .expect("offer sdp")
            .to_owned()
    })
    .await;
    let pc = subscriber_pc(Some(host), stats, clock).await;
    let mut state = peers::state_channel(&pc);
    pc.set_remote_description(RTCSessionDescription::offer(offer).expect("offer"))
        .await
        .expect("subscriber remote description");
    let answer = pc.create_answer(None).await.expect("answer");
    let answer = peers::set_local_gathered(&pc, answer).await;
    blocking(move || {
        h.message(
            json!({"request": "start", "room": ROOM}),
            Some(json!({"type": "answer", "sdp": answer})),
        )
    })
    .await;
    peers::wait_connected(&mut state, "Janus subscriber").await;
    pc
}

/// Starts Janus in `ns`, pinned to the server's core when `pinned`, and waits until its
/// HTTP API answers.
fn start_janus(ns: &Netns, dir: &Path, pinned: bool) -> (Proc, SocketAddr) {
    write_config(dir);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name]);
    if pinned {
        cmd.args(["taskset", "-c", &SERVER_CORE.to_string()]);
    }
    cmd.arg("janus")
        .arg("-C")
        .arg(dir.join("janus.jcfg"))
        .arg("-F")
        .arg(dir);
    let janus = Proc::spawn("janus", &mut cmd, &dir.join("janus.log")).expect("start janus");
    let addr = SocketAddr::from((ns.inside, JANUS_PORT));
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::http_get(addr, "/janus/info").is_none_or(|(status, _)| status != 200) {
        assert!(
            Instant::now() < deadline,
            "Janus did not answer within 20 s:\n{}",
            janus.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (janus, addr)
}

/// One Janus run of scenario `s`.
pub(super) fn run(s: &Scenario, secs: u64, pinned: bool, ns: &Netns) -> Run {
    assert!(
        super::load::find_tool("janus").is_some(),
        "`janus` is not installed: apt-get install janus"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let (janus, addr) = start_janus(ns, dir.path(), pinned);
    let admin = Handle::attach(addr);
    admin.message(
        json!({"request": "create", "room": ROOM, "publishers": s.publishers + 1,
               "bitrate": 0, "videocodec": "vp8", "audiocodec": "opus",
               "notify_joining": false}),
        None,
    );

    let stats = shared_stats(s.subscribers());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let runtime = runtime(2);
    let senders = publishers_runtime();
    let mut run = runtime.block_on(async {
        let mut feeds = Vec::new();
        let mut pcs = Vec::new();
        for p in 0..s.publishers {
            let (host, video) = (ns.host, s.video);
            let (feed, tracks, pc) = senders
                .spawn(async move { publish(host, addr, p, video).await })
                .await
                .expect("Janus publisher");
            let source = Source::new(p as u16, s.video);
            senders.spawn(send_media(source, tracks, epoch, stop.clone()));
            feeds.push(feed);
            pcs.push(pc);
        }
        let all: Vec<usize> = (0..s.subscribers()).collect();
        let mut failed = 0;
        for chunk in all.chunks(10) {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    let mine: Vec<u64> = s.feeds(i).iter().map(|&p| feeds[p]).collect();
                    tokio::spawn(subscribe(
                        ns.host,
                        addr,
                        mine,
                        stats[i].clone(),
                        (epoch, measuring.clone()),
                    ))
                })
                .collect();
            for t in tasks {
                // As for confnode: a failed subscriber is left out and counted.
                match t.await {
                    Ok(pc) => pcs.push(pc),
                    Err(_) => failed += 1,
                }
            }
        }
        println!(
            "  Janus: {} publishers and {} subscribers connected after {:.1} s ({failed} failed)",
            s.publishers,
            s.subscribers() - failed,
            epoch.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let cpu0 = super::cpu_seconds(janus.pid()).expect("Janus's /proc/PID/stat");
        let wake0 = super::wakeups(janus.pid()).unwrap_or(0);
        let gen0 = own_cpu();
        measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(secs)).await;
        measuring.store(false, Ordering::Relaxed);
        let cpu1 = super::cpu_seconds(janus.pid()).expect("Janus's /proc/PID/stat");
        let wake1 = super::wakeups(janus.pid()).unwrap_or(0);
        let gen1 = own_cpu();
        stop.store(true, Ordering::Relaxed);
        for pc in &pcs {
            let _ = pc.close().await;
        }
        Run {
            cpu_s: cpu1 - cpu0,
            gen_cpu_s: gen1 - gen0,
            wakeups: wake1.saturating_sub(wake0) as f64,
            failed,
            secs: secs as f64,
            ..Run::default()
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    senders.shutdown_timeout(Duration::from_secs(2));
    drop(janus);
    run.take_stats(&stats);
    run.out_pps = run.received as f64 / run.secs;
    let per_publisher = if s.video {
        (0..3).map(layer_pps).sum::<f64>()
    } else {
        0.0
    } + super::AUDIO_PPS;
    run.in_pps = per_publisher * s.publishers as f64;
    run
}
