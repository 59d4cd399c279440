//! The iceoryx2 (Rust) anchor of `npm run bench:stream`: the stream bench contract's roles over
//! the iceoryx2 crate, like bench/stream_iceoryx2.py over its Python bindings (same flags):
//!
//!   stream_iceoryx2 consume --address A --batches N [--bytes B] [--spin-micros S] [--wake event|poll]
//!   stream_iceoryx2 produce --address A --bytes B --batches N [--interval-ms I] [--wake event|poll]
//!   stream_iceoryx2 pong    --address A [--bytes B] [--spin-micros S] [--wake event|poll]
//!   stream_iceoryx2 ping    --address A --bytes B --rounds N [--spin-micros S] [--wake event|poll]
//!
//! A sample is a user header (f64 sent_ms, CLOCK_MONOTONIC) and a slice of B payload bytes, loaned
//! from the publisher's shared memory and filled in place. No overflow: a full subscriber buffer
//! makes the publisher retry. --wake event: the publisher notifies an event service after every
//! sample and the reader sleeps on it after spinning S µs; --wake poll: the reader polls for ever.

use core::time::Duration;
use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iceoryx2::sample::Sample;
use iceoryx2::service::port_factory::{event, publish_subscribe};
use std::error::Error;
use std::time::Instant;

type Ipc = ipc::Service;
type Result<T> = core::result::Result<T, Box<dyn Error>>;

const RING_BYTES: usize = 64 * 1024 * 1024;
/// sent_ms of the sample that ends a ping stream (iceoryx2 has no end of stream).
const END_MS: f64 = -1.0;
/// A peer silent this long is gone: fail instead of hanging the bench.
const WAIT_LIMIT: Duration = Duration::from_secs(60);
const WARM_UP_ROUNDS: usize = 100;

// CLOCK_MONOTONIC and getrusage straight from libc (x86_64 Linux layouts), the clocks every peer uses.
#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}
#[repr(C)]
struct Rusage {
    utime: Timespec, // struct timeval: seconds, microseconds
    stime: Timespec,
    rest: [i64; 14],
}
extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    fn getrusage(who: i32, usage: *mut Rusage) -> i32;
}

fn now_ms() -> f64 {
    let mut ts = Timespec { sec: 0, nsec: 0 };
    unsafe {
        clock_gettime(1 /* CLOCK_MONOTONIC */, &mut ts)
    };
    ts.sec as f64 * 1e3 + ts.nsec as f64 / 1e6
}

fn cpu_ms() -> f64 {
    let mut u = Rusage {
        utime: Timespec { sec: 0, nsec: 0 },
        stime: Timespec { sec: 0, nsec: 0 },
        rest: [0; 14],
    };
    unsafe {
        getrusage(0 /* RUSAGE_SELF */, &mut u)
    };
    (u.utime.sec + u.stime.sec) as f64 * 1e3 + (u.utime.nsec + u.stime.nsec) as f64 / 1e3
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn buffer_samples(bytes: usize) -> usize {
    (RING_BYTES / bytes.max(1)).clamp(2, 1024)
}

#[derive(Clone, Copy, PartialEq)]
enum Wake {
    Event,
    Poll,
}

struct Args {
    role: String,
    address: String,
    batches: usize,
    rounds: usize,
    bytes: Option<usize>,
    interval_ms: f64,
    spin_micros: f64,
    wake: Wake,
}

fn parse_args() -> Result<Args> {
    let mut argv = std::env::args().skip(1);
    let role = argv
        .next()
        .ok_or("usage: stream_iceoryx2 consume|produce|pong|ping --address A ...")?;
    if !["consume", "produce", "pong", "ping"].contains(&role.as_str()) {
        return Err(format!("unknown role {role}").into());
    }
    let mut a = Args {
        role,
        address: String::new(),
        batches: 0,
        rounds: 0,
        bytes: None,
        interval_ms: 0.0,
        spin_micros: 0.0,
        wake: Wake::Event,
    };
    while let Some(flag) = argv.next() {
        let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("bad value for {flag}: {value}");
        match flag.as_str() {
            "--address" => a.address = value.trim_start_matches('@').to_string(),
            "--batches" => a.batches = value.parse().map_err(bad)?,
            "--rounds" => a.rounds = value.parse().map_err(bad)?,
            "--bytes" => a.bytes = Some(value.parse().map_err(bad)?),
            "--interval-ms" => {
                a.interval_ms = value
                    .parse()
                    .map_err(|_| format!("bad value for {flag}: {value}"))?
            }
            "--spin-micros" => {
                a.spin_micros = value
                    .parse()
                    .map_err(|_| format!("bad value for {flag}: {value}"))?
            }
            "--capacity-bytes" => {} // accepted for the contract; the buffer follows --bytes
            "--wake" => {
                a.wake = match value.as_str() {
                    "event" => Wake::Event,
                    "poll" => Wake::Poll,
                    _ => return Err(format!("--wake is event or poll, not {value}").into()),
                }
            }
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    if a.address.is_empty() {
        return Err("--address is required".into());
    }
    if (a.role == "consume" || a.role == "produce") && a.batches == 0
        || a.role == "ping" && a.rounds == 0
    {
        return Err("--batches (consume, produce) or --rounds (ping) must be at least 1".into());
    }
    Ok(a)
}

/// One direction: a publish/subscribe service `<name>/data` and its wake-up event `<name>/wake`.
struct Link {
    service: publish_subscribe::PortFactory<Ipc, [u8], f64>,
    event: Option<event::PortFactory<Ipc>>,
}

impl Link {
    fn open(node: &Node<Ipc>, name: &str, samples: usize, wake: Wake) -> Result<Link> {
        let base = format!("arrow-shm-bench/{name}");
        let data: ServiceName = format!("{base}/data").as_str().try_into()?;
        let service = node
            .service_builder(&data)
            .publish_subscribe::<[u8]>()
            .user_header::<f64>()
            .enable_safe_overflow(false)
            .subscriber_max_buffer_size(samples)
            .history_size(0)
            .max_publishers(1)
            .max_subscribers(1)
            .open_or_create()?;
        let event = match wake {
            Wake::Event => {
                let name: ServiceName = format!("{base}/wake").as_str().try_into()?;
                Some(node.service_builder(&name).event().open_or_create()?)
            }
            Wake::Poll => None,
        };
        Ok(Link { service, event })
    }

    /// The connecting side: the listening side creates the services; retried for up to 5 s like connect().
    fn connect(node: &Node<Ipc>, name: &str, samples: usize, wake: Wake) -> Result<Link> {
        let start = Instant::now();
        loop {
            match Link::open(node, name, samples, wake) {
                Ok(link) if link.service.dynamic_config().number_of_subscribers() > 0 => {
                    return Ok(link)
                }
                Err(e) if start.elapsed() > Duration::from_secs(5) => return Err(e),
                _ if start.elapsed() > Duration::from_secs(5) => {
                    return Err(format!("no subscriber on {name} after 5 s").into())
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

struct Reader {
    subscriber: Subscriber<Ipc, [u8], f64>,
    listener: Option<Listener<Ipc>>,
    spin: Duration,
}

impl Reader {
    fn new(link: &Link, spin_micros: f64) -> Result<Reader> {
        let subscriber = link.service.subscriber_builder().create()?;
        let listener = match &link.event {
            Some(e) => Some(e.listener_builder().create()?),
            None => None,
        };
        Ok(Reader {
            subscriber,
            listener,
            spin: Duration::from_nanos((spin_micros * 1e3) as u64),
        })
    }

    /// The next sample: busy-polls up to the spin time, then sleeps on the event (or polls on).
    fn receive(&self) -> Result<Sample<Ipc, [u8], f64>> {
        let start = Instant::now();
        loop {
            if let Some(sample) = self.subscriber.receive()? {
                return Ok(sample);
            }
            if let Some(listener) = &self.listener {
                if start.elapsed() >= self.spin {
                    // A notification sent after the receive() above stays pending: no lost wake-up.
                    listener.timed_wait(|_| {}, Duration::from_millis(500))?;
                }
            }
            if start.elapsed() > WAIT_LIMIT {
                return Err("no sample for 60 s: the publisher is gone".into());
            }
        }
    }
}

struct Writer<'a> {
    link: &'a Link,
    publisher: Publisher<Ipc, [u8], f64>,
    notifier: Option<Notifier<Ipc>>,
    source: Vec<u8>,
}

impl<'a> Writer<'a> {
    fn new(link: &'a Link, size: usize) -> Result<Writer<'a>> {
        let publisher = link
            .service
            .publisher_builder()
            .initial_max_slice_len(size.max(1))
            .allocation_strategy(AllocationStrategy::Static)
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()?;
        let notifier = match &link.event {
            Some(e) => Some(e.notifier_builder().create()?),
            None => None,
        };
        Ok(Writer {
            link,
            publisher,
            notifier,
            source: vec![7u8; size],
        }) // built once, reused
    }

    /// Sends one sample (sent_ms None: now). send() counts 0 recipients, the sample dropped, before
    /// the publisher connected to its subscriber (and, if ever, with the buffer full): sent again,
    /// so nothing is lost.
    fn write(&self, sent_ms: Option<f64>, size: usize) -> Result<()> {
        let mut deadline = None;
        loop {
            let mut sample = self.publisher.loan_slice_uninit(size)?;
            *sample.user_header_mut() = sent_ms.unwrap_or_else(now_ms);
            let sample = sample.write_from_slice(&self.source[..size]);
            if sample.send()? > 0 {
                break;
            }
            let limit = *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(5));
            if Instant::now() > limit {
                return Err("no subscriber took the sample for 5 s".into());
            }
            std::thread::yield_now();
        }
        if let Some(n) = &self.notifier {
            n.notify()?;
        }
        Ok(())
    }

    /// The contract's close: returns once the reader took everything (it drops its subscriber then).
    fn wait_until_unsubscribed(&self) -> Result<()> {
        let start = Instant::now();
        while self.link.service.dynamic_config().number_of_subscribers() > 0 {
            if start.elapsed() > WAIT_LIMIT {
                return Err("the subscriber did not finish reading".into());
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        Ok(())
    }
}

fn pause(interval_ms: f64) {
    if interval_ms >= 1.0 {
        std::thread::sleep(Duration::from_secs_f64(interval_ms / 1e3));
    } else {
        let until = now_ms() + interval_ms;
        while now_ms() < until {}
    }
}

fn consume(node: &Node<Ipc>, a: &Args) -> Result<()> {
    let bytes = a.bytes.unwrap_or(8);
    let link = Link::open(node, &a.address, buffer_samples(bytes), a.wake)?;
    let reader = Reader::new(&link, a.spin_micros)?;
    println!("{{\"ready\":true}}");
    let cpu = cpu_ms();
    let mut latencies = Vec::with_capacity(a.batches);
    let (mut first_sent, mut last_recv) = (0.0, 0.0);
    for i in 0..a.batches {
        let sample = reader.receive()?;
        let sent = *sample.user_header();
        let length = sample.payload().len();
        last_recv = now_ms();
        drop(sample); // released: its memory goes back to the publisher
        if a.bytes.is_some_and(|b| b != length) {
            return Err(format!("sample {i} has {length} bytes, not {bytes}").into());
        }
        if i == 0 {
            first_sent = sent;
        }
        latencies.push((last_recv - sent) * 1e3);
    }
    drop(reader);
    latencies.sort_by(f64::total_cmp);
    println!(
        "{{\"batches\":{},\"first_sent_ms\":{first_sent},\"last_recv_ms\":{last_recv},\"latency_median_us\":{},\"latency_p99_us\":{},\"cpu_ms\":{}}}",
        a.batches,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        cpu_ms() - cpu
    );
    Ok(())
}

fn produce(node: &Node<Ipc>, a: &Args) -> Result<()> {
    let cpu = cpu_ms();
    let bytes = a.bytes.ok_or("--bytes is required")?;
    let link = Link::connect(node, &a.address, buffer_samples(bytes), a.wake)?;
    let writer = Writer::new(&link, bytes)?;
    for _ in 0..a.batches {
        writer.write(None, bytes)?;
        if a.interval_ms > 0.0 {
            pause(a.interval_ms);
        }
    }
    writer.wait_until_unsubscribed()?;
    drop(writer);
    println!("{{\"cpu_ms\":{}}}", cpu_ms() - cpu);
    Ok(())
}

fn pong(node: &Node<Ipc>, a: &Args) -> Result<()> {
    let bytes = a.bytes.unwrap_or(8);
    let samples = buffer_samples(bytes);
    let incoming = Link::open(node, &format!("{}/ping", a.address), samples, a.wake)?;
    let reader = Reader::new(&incoming, a.spin_micros)?;
    println!("{{\"ready\":true}}");
    let cpu = cpu_ms();
    let mut reply: Option<(Link, usize)> = None;
    let mut writer: Option<Writer> = None;
    loop {
        let sample = reader.receive()?;
        let (sent, length) = (*sample.user_header(), sample.payload().len());
        drop(sample);
        if sent == END_MS {
            break;
        }
        if reply.is_none() {
            // The reply service exists once ping subscribed to it, before its first write.
            reply = Some((
                Link::connect(node, &format!("{}/pong", a.address), samples, a.wake)?,
                length,
            ));
            writer = Some(Writer::new(&reply.as_ref().unwrap().0, bytes.max(length))?);
        }
        writer.as_ref().unwrap().write(Some(sent), length)?;
    }
    drop(writer);
    drop(reader);
    println!("{{\"cpu_ms\":{}}}", cpu_ms() - cpu);
    Ok(())
}

fn ping(node: &Node<Ipc>, a: &Args) -> Result<()> {
    let cpu = cpu_ms();
    let bytes = a.bytes.ok_or("--bytes is required")?;
    let samples = buffer_samples(bytes);
    let replies = Link::open(node, &format!("{}/pong", a.address), samples, a.wake)?;
    let reader = Reader::new(&replies, a.spin_micros)?;
    let outgoing = Link::connect(node, &format!("{}/ping", a.address), samples, a.wake)?;
    let writer = Writer::new(&outgoing, bytes)?;
    let mut rtts = Vec::with_capacity(a.rounds);
    for i in 0..WARM_UP_ROUNDS + a.rounds {
        writer.write(None, bytes)?;
        let sample = reader.receive()?;
        let received = now_ms();
        let sent = *sample.user_header();
        drop(sample);
        if i >= WARM_UP_ROUNDS {
            rtts.push((received - sent) * 1e3);
        }
    }
    writer.write(Some(END_MS), bytes)?;
    writer.wait_until_unsubscribed()?;
    drop(writer);
    drop(reader);
    rtts.sort_by(f64::total_cmp);
    println!(
        "{{\"rounds\":{},\"rtt_median_us\":{},\"rtt_p99_us\":{},\"cpu_ms\":{}}}",
        a.rounds,
        percentile(&rtts, 0.5),
        percentile(&rtts, 0.99),
        cpu_ms() - cpu
    );
    Ok(())
}

fn run() -> Result<()> {
    let a = parse_args()?;
    set_log_level_from_env_or(LogLevel::Error);
    let node = NodeBuilder::new()
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<Ipc>()?;
    match a.role.as_str() {
        "consume" => consume(&node, &a),
        "produce" => produce(&node, &a),
        "pong" => pong(&node, &a),
        _ => ping(&node, &a),
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("stream_iceoryx2: {e}");
        std::process::exit(1);
    }
}
