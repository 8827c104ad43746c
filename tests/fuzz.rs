//! Every RPC fuzzed with structured random requests: messages built from the
//! CRI schema itself (`k8s_cri::FILE_DESCRIPTOR_SET`), so each field of each
//! request gets values of its type, strings from a hostile corpus (`..`,
//! NUL, huge, absolute and /proc paths, shell and format metacharacters)
//! mixed with the ids and image of a live pod and container. Against a
//! running daemon: every call answers within its deadline, only with a
//! status a client can act on (never Internal or Unknown), and the daemon
//! neither panics nor dies.
//!
//! `CRIUS_FUZZ_SEED` picks the run (printed; fixed by default so CI repeats
//! it) and `CRIUS_FUZZ_CASES` the requests per RPC; `hack/fuzz.sh` runs it
//! longer with a random seed.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::pod::*;
use common::rng::Rng;
use common::*;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

/// The server's own deadline on every call; a call not answered within
/// [`HANG`] is a hang.
const DEADLINE: &str = "3S";
const HANG: Duration = Duration::from_secs(15);
/// How long an answered server stream is read before it is dropped.
const STREAM_READ: Duration = Duration::from_millis(200);
/// Deepest message nesting generated.
const MAX_DEPTH: usize = 5;

/// The schema's messages and enums by full name (`.runtime.v1.X`).
struct Schema {
    messages: HashMap<String, DescriptorProto>,
    enums: HashMap<String, Vec<i32>>,
}

impl Schema {
    fn load() -> (Schema, Vec<Rpc>) {
        let set = FileDescriptorSet::decode(k8s_cri::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let mut schema = Schema {
            messages: HashMap::new(),
            enums: HashMap::new(),
        };
        let mut rpcs = Vec::new();
        for file in &set.file {
            let prefix = format!(".{}", file.package());
            for m in &file.message_type {
                schema.add_message(&prefix, m);
            }
            for e in &file.enum_type {
                let values = e.value.iter().map(|v| v.number()).collect();
                schema
                    .enums
                    .insert(format!("{prefix}.{}", e.name()), values);
            }
            for service in &file.service {
                for m in &service.method {
                    rpcs.push(Rpc {
                        path: format!("/{}.{}/{}", file.package(), service.name(), m.name()),
                        input: m.input_type().to_string(),
                        streaming: m.server_streaming(),
                    });
                }
            }
        }
        (schema, rpcs)
    }

    fn add_message(&mut self, prefix: &str, m: &DescriptorProto) {
        let name = format!("{prefix}.{}", m.name());
        for nested in &m.nested_type {
            self.add_message(&name, nested);
        }
        for e in &m.enum_type {
            let values = e.value.iter().map(|v| v.number()).collect();
            self.enums.insert(format!("{name}.{}", e.name()), values);
        }
        self.messages.insert(name, m.clone());
    }
}

struct Rpc {
    path: String,
    input: String,
    streaming: bool,
}

/// Builds random, well-formed protobuf messages of the schema's types.
struct Gen<'a> {
    schema: &'a Schema,
    rng: Rng,
    /// Strings that name real objects: the live pod, container and image.
    live: Vec<String>,
}

impl Gen<'_> {
    fn message(&mut self, name: &str, depth: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let Some(m) = self.schema.messages.get(name) else {
            return out;
        };
        // Map entries always carry both key and value.
        let entry = m.options.as_ref().is_some_and(|o| o.map_entry());
        for f in &m.field {
            if !entry && !self.rng.chance(60) {
                continue;
            }
            let count = if f.label() == Label::Repeated {
                match self.rng.below(10) {
                    0 => 20 + self.rng.below(200),
                    n => n % 4,
                }
            } else {
                1
            };
            for _ in 0..count {
                self.field(
                    f.number() as u64,
                    f.r#type(),
                    f.type_name(),
                    depth,
                    &mut out,
                );
            }
        }
        out
    }

    fn field(&mut self, number: u64, kind: Type, type_name: &str, depth: usize, out: &mut Vec<u8>) {
        match kind {
            Type::String => {
                let s = self.string();
                bytes_field(number, s.as_bytes(), out);
            }
            Type::Bytes => {
                let n = self.rng.below(64);
                let b: Vec<u8> = (0..n).map(|_| self.rng.next() as u8).collect();
                bytes_field(number, &b, out);
            }
            Type::Message if depth < MAX_DEPTH => {
                let m = self.message(type_name, depth + 1);
                bytes_field(number, &m, out);
            }
            Type::Message | Type::Group => {}
            Type::Enum => {
                let values = self
                    .schema
                    .enums
                    .get(type_name)
                    .cloned()
                    .unwrap_or_default();
                let v = if !values.is_empty() && self.rng.chance(80) {
                    i64::from(*self.rng.pick(&values))
                } else {
                    self.int()
                };
                varint_field(number, v as u64, out);
            }
            Type::Bool => varint_field(number, self.rng.below(2) as u64, out),
            Type::Int32 | Type::Int64 | Type::Uint32 | Type::Uint64 => {
                let v = self.int();
                // Out-of-range values are truncated by the decoder, as proto3 says.
                varint_field(number, v as u64, out);
            }
            Type::Sint32 | Type::Sint64 => {
                let v = self.int();
                varint_field(number, ((v << 1) ^ (v >> 63)) as u64, out);
            }
            Type::Fixed32 | Type::Sfixed32 | Type::Float => {
                varint(number << 3 | 5, out);
                out.extend_from_slice(&(self.int() as u32).to_le_bytes());
            }
            Type::Fixed64 | Type::Sfixed64 | Type::Double => {
                varint(number << 3 | 1, out);
                out.extend_from_slice(&(self.int() as u64).to_le_bytes());
            }
        }
    }

    fn int(&mut self) -> i64 {
        const EDGES: &[i64] = &[
            0,
            1,
            -1,
            2,
            10,
            1024,
            65535,
            65536,
            i32::MAX as i64,
            i32::MIN as i64,
            u32::MAX as i64,
            i64::MAX,
            i64::MIN,
        ];
        if self.rng.chance(70) {
            *self.rng.pick(EDGES)
        } else {
            self.rng.next() as i64
        }
    }

    fn string(&mut self) -> String {
        const HOSTILE: &[&str] = &[
            "",
            ".",
            "..",
            "../../../../../../etc/passwd",
            "/etc/shadow",
            "/",
            "/proc/self/root/etc",
            "/proc/1/ns/net",
            "/dev/sda",
            "/sys/kernel",
            "a\0b",
            "\0",
            "\n",
            "a/../../b",
            "C:\\windows",
            "$(reboot)",
            "`id`",
            "; rm -rf /",
            "%s%n%x",
            "{{.}}",
            "x;IP=10.88.0.250",
            "a=b",
            "-rf",
            "ünïcødé",
            "\u{202e}txt",
            "localhost:5000/busybox:latest",
            "docker.io/library/busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "busybox",
            "127.0.0.1:1/x:y",
            "kernel.shm_rmid_forced",
            "net.ipv4.ip_forward",
            "10.0.0.0/8",
            "::1",
            "0.0.0.0",
            "RuntimeDefault",
            "localhost/profile",
            "unconfined",
            "SYS_ADMIN",
            "ALL",
            "tcp",
        ];
        match self.rng.below(20) {
            0..=7 => self.rng.pick(HOSTILE).to_string(),
            8..=10 => self.rng.pick(&self.live).clone(),
            11 => format!("{}/../x", self.rng.pick(&self.live)),
            12 => "a".repeat(1 + self.rng.below(300_000)),
            13 => "../".repeat(1 + self.rng.below(2_000)),
            _ => {
                let n = 1 + self.rng.below(40);
                (0..n)
                    .map(|_| char::from(b' ' + (self.rng.next() % 95) as u8))
                    .collect()
            }
        }
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_field(number: u64, v: u64, out: &mut Vec<u8>) {
    varint(number << 3, out);
    varint(v, out);
}

fn bytes_field(number: u64, b: &[u8], out: &mut Vec<u8>) {
    varint(number << 3 | 2, out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// At most 200 bytes of `s`, for a report.
fn shown(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Codes a client can act on; Internal, Unknown or DataLoss for a request
/// is a bug.
fn allowed(code: &str) -> bool {
    use tonic::Code;
    let Ok(n) = code.parse::<i32>() else {
        return false;
    };
    !matches!(
        Code::from_i32(n),
        Code::Internal | Code::Unknown | Code::DataLoss
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_survives_random_requests() {
    let seed = env_number("CRIUS_FUZZ_SEED", 0x5eed);
    let cases = env_number("CRIUS_FUZZ_CASES", 20);
    println!("fuzz: CRIUS_FUZZ_SEED={seed} CRIUS_FUZZ_CASES={cases}");

    let mut env = env("fuzz").await;
    let container = env.run("live", "sleep 3600").await;
    let image_id = env.status(&container).await.image_ref;
    let (schema, rpcs) = Schema::load();
    assert!(rpcs.len() >= 41, "{} RPCs in the schema", rpcs.len());
    let mut generator = Gen {
        schema: &schema,
        rng: Rng(seed),
        live: vec![
            env.pod.clone(),
            container.clone(),
            env.image.clone(),
            image_id,
            env.logs.display().to_string(),
            "live".into(),
            "fuzz".into(),
        ],
    };

    let mut send = h2_connection(&env.d.paths.socket).await;
    let mut order: Vec<usize> = (0..rpcs.len())
        .flat_map(|i| std::iter::repeat_n(i, cases as usize))
        .collect();
    // Interleave the RPCs, so one call's leftovers meet the next one.
    for i in (1..order.len()).rev() {
        let j = generator.rng.below(i + 1);
        order.swap(i, j);
    }
    let started = Instant::now();
    let mut wrong = Vec::new();
    let mut codes: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut slowest = (Duration::ZERO, String::new());
    for (n, &i) in order.iter().enumerate() {
        let rpc = &rpcs[i];
        let message = generator.message(&rpc.input, 0);
        let open_for = if rpc.streaming { STREAM_READ } else { HANG };
        let t = Instant::now();
        let answer = tokio::time::timeout(
            HANG,
            grpc_status(&mut send, &rpc.path, &message, Some(DEADLINE), open_for),
        )
        .await;
        let took = t.elapsed();
        if took > slowest.0 {
            slowest = (took, rpc.path.clone());
        }
        let case = format!("case {n} {} ({} bytes)", rpc.path, message.len());
        let code = match answer {
            Err(_) => {
                wrong.push(format!("{case}: no answer in {HANG:?}"));
                "hang".to_string()
            }
            Ok(None) if rpc.streaming => "stream".to_string(),
            Ok(None) => {
                wrong.push(format!("{case}: no status"));
                "none".to_string()
            }
            Ok(Some((code, msg))) => {
                if code == "transport" {
                    // The connection is gone: report it, go on on a new one.
                    send = h2_connection(&env.d.paths.socket).await;
                }
                if !allowed(&code) {
                    wrong.push(format!("{case}: code {code}: {}", shown(&msg)));
                }
                if msg.len() >= 1024 {
                    wrong.push(format!(
                        "{case}: {} byte message echoes input: {}",
                        msg.len(),
                        shown(&msg)
                    ));
                }
                code
            }
        };
        *codes
            .entry(rpc.path.rsplit('/').next().unwrap_or_default().to_string())
            .or_default()
            .entry(code)
            .or_default() += 1;
    }
    println!(
        "fuzz: {} calls in {:.1?}, slowest {:.1?} ({})",
        order.len(),
        started.elapsed(),
        slowest.0,
        slowest.1
    );
    for (rpc, c) in &codes {
        println!("  {rpc:<32} {c:?}");
    }

    // Still serving, and never panicked.
    let version = env.rt.version(k8s_cri::v1::VersionRequest::default()).await;
    assert!(version.is_ok(), "daemon answers after the run: {version:?}");
    let logs = env.d.logs();
    assert!(
        !logs.contains("panicked"),
        "the daemon panicked (seed {seed}):\n{logs}"
    );
    assert!(
        wrong.is_empty(),
        "seed {seed}: {} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
