//! The embedded MQTT broker (rumqttd), run when no external broker is configured.
//!
//! Limits, stated plainly: one MQTT 3.1.1 listener, no TLS, no authentication and no per-device
//! ACLs, so any client that reaches the port can publish as any device. Keep it on loopback;
//! a fleet uses Mosquitto, EMQX or another real broker with certificate identities.
//!
//! rumqttd cannot be stopped and does not report its bound port, so the listener address is
//! resolved first (port 0 becomes a free port chosen here) and the broker then runs on its own
//! threads for the life of the process.

use std::net::SocketAddr;
#[cfg(feature = "embedded-broker")]
use std::net::{TcpListener, TcpStream};
#[cfg(feature = "embedded-broker")]
use std::time::{Duration, Instant};

use super::ServerError;

/// Largest MQTT packet the embedded broker accepts: a chunk frame or JSON message with room.
#[cfg(feature = "embedded-broker")]
const MAX_PAYLOAD_BYTES: usize = 2 * 1024 * 1024;

/// How long the broker may take to accept connections after it is started.
#[cfg(feature = "embedded-broker")]
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Without the `embedded-broker` cargo feature there is no broker to start: the configuration
/// must name an external one.
#[cfg(not(feature = "embedded-broker"))]
pub fn start_embedded(listen: SocketAddr) -> Result<SocketAddr, ServerError> {
    Err(ServerError::Broker(format!(
        "this build of outpost has no embedded MQTT broker (cargo feature `embedded-broker`), so \
         it cannot listen on {listen}: set broker.url to an MQTT broker"
    )))
}

/// Starts rumqttd on `listen` and returns the address it accepts connections on.
#[cfg(feature = "embedded-broker")]
pub fn start_embedded(listen: SocketAddr) -> Result<SocketAddr, ServerError> {
    // Binding here first gives a clear error for a taken port and turns port 0 into a real one.
    let address =
        TcpListener::bind(listen).and_then(|listener| listener.local_addr()).map_err(|source| {
            ServerError::Bind { what: "embedded MQTT broker", address: listen, source }
        })?;
    let config_text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "outpost-embedded-v4"
listen = "{address}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = {MAX_PAYLOAD_BYTES}
max_inflight_count = 200
dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&config_text).map_err(|error| {
        ServerError::Broker(format!("embedded broker configuration is invalid: {error}"))
    })?;
    std::thread::Builder::new()
        .name("outpost-embedded-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(error) = broker.start() {
                tracing::error!(%error, "the embedded MQTT broker stopped");
            }
        })
        .map_err(|error| ServerError::Broker(format!("cannot start the broker thread: {error}")))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
            Ok(_) => break,
            Err(error) if Instant::now() >= deadline => {
                return Err(ServerError::Broker(format!(
                    "the embedded broker did not accept connections on {address} within {}s: \
                     {error}",
                    START_TIMEOUT.as_secs()
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    tracing::info!(%address, "embedded MQTT broker listening (no TLS, no authentication)");
    Ok(address)
}
