//! The OIP v2 REST API over TCP (port 0) and a Unix socket: every route, every bad request
//! issue 3 lists answered with a 4xx JSON error naming the problem, concurrent clients, and a
//! server that still answers a good request after all the bad ones.

use std::sync::Arc;

use outpost_agent::Runtime;
use outpost_agent::api::{self, ActiveRuntime, BoundListener};
use outpost_agent::config::{ApiConfig, ListenAddress};
use outpost_shared::oip::Tensor;
use outpost_tests::fixtures::baseline_request;
use tokio::sync::oneshot;

use crate::{HttpResponse, Target, TestDir, http};

/// A server on a runtime (or none), stopped when dropped.
struct Server {
    target: Target,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    async fn start(
        runtime: Option<Arc<Runtime>>,
        listen: ListenAddress,
        max_body_bytes: usize,
    ) -> Self {
        let config = ApiConfig { listen: listen.clone(), max_body_bytes, max_concurrency: 2 };
        let listener = BoundListener::bind(&listen).await.expect("bind");
        let target = match listener.local_address().expect("address") {
            ListenAddress::Tcp(address) => Target::Tcp(address),
            ListenAddress::Unix(path) => Target::Unix(path),
        };
        let router = api::router(Arc::new(ActiveRuntime::new(runtime)), &config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(listener.serve(router, async move {
            let _ = stopped.await;
        }));
        Self { target, stop: Some(stop), task: Some(task) }
    }

    async fn tcp(runtime: Option<Arc<Runtime>>) -> Self {
        Self::start(runtime, ListenAddress::Tcp("127.0.0.1:0".parse().expect("addr")), 64 * 1024)
            .await
    }

    async fn get(&self, path: &str) -> HttpResponse {
        http(&self.target, "GET", path, None, b"").await
    }

    async fn post_json(&self, path: &str, body: &[u8]) -> HttpResponse {
        http(&self.target, "POST", path, Some("application/json"), body).await
    }

    /// Stops accepting, lets requests finish, and checks the server ended cleanly.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let ended = tokio::time::timeout(crate::NETWORK_TIMEOUT, task).await;
            ended.expect("server stops in time").expect("server task").expect("server result");
        }
    }
}

const INFER: &str = "/v2/models/mlp_classifier/infer";

fn good_body(row: usize) -> Vec<u8> {
    serde_json::to_vec(&baseline_request("mlp_classifier", row)).expect("body")
}

fn assert_refused(response: &HttpResponse, status: u16, expected: &[&str]) -> String {
    assert_eq!(
        response.status,
        status,
        "expected {status}, got {}: {}",
        response.status,
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.content_type.as_deref(), Some("application/json"));
    let error = response.error();
    for fragment in expected {
        assert!(error.contains(fragment), "error {error:?} lacks {fragment:?}");
    }
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metadata_and_a_good_inference() {
    let test = TestDir::new();
    let server = Server::tcp(Some(test.runtime("mlp_classifier"))).await;
    assert_eq!(server.get("/v2/health/live").await.status, 200);
    let ready = server.get("/v2/health/ready").await;
    assert_eq!((ready.status, ready.json()["ready"].as_bool()), (200, Some(true)));
    assert_eq!(server.get("/v2").await.json()["name"], "outpost-agent");
    let metadata = server.get("/v2/models/mlp_classifier").await;
    assert_eq!(metadata.status, 200);
    let metadata = metadata.json();
    assert_eq!(metadata["name"], "mlp_classifier");
    assert_eq!(metadata["versions"][0], "1.0.0");
    assert_eq!(metadata["platform"], "onnx-tract");
    assert_eq!(
        metadata["inputs"][0],
        serde_json::json!({"name": "features", "datatype": "FP32", "shape": [1, 8]})
    );
    assert_eq!(metadata["outputs"][0]["name"], "probabilities");
    assert_eq!(server.get("/v2/models/mlp_classifier/ready").await.json()["ready"], true);
    assert_eq!(server.get("/v2/models/mlp_classifier/versions/1.0.0").await.status, 200);

    let response = server.post_json(INFER, &good_body(0)).await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    let json = response.json();
    assert_eq!(json["model_name"], "mlp_classifier");
    assert_eq!(json["model_version"], "1.0.0");
    assert_eq!(json["outputs"][0]["name"], "probabilities");
    assert_eq!(json["outputs"][0]["shape"], serde_json::json!([1, 3]));
    let sum: f64 = json["outputs"][0]["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|v| v.as_f64())
        .sum();
    assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to {sum}");
    let versioned =
        server.post_json("/v2/models/mlp_classifier/versions/1.0.0/infer", &good_body(1)).await;
    assert_eq!(versioned.status, 200);
    // A request without a Content-Type header is read as JSON too.
    let bare = http(&server.target, "POST", INFER, None, &good_body(2)).await;
    assert_eq!(bare.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_requests_and_nested_data_on_a_variable_batch_model() {
    let test = TestDir::new();
    let server = Server::tcp(Some(test.runtime("batched_classifier"))).await;
    let metadata = server.get("/v2/models/batched_classifier").await.json();
    assert_eq!(metadata["inputs"][0]["shape"], serde_json::json!([-1, 8]));
    let rows: Vec<Vec<f64>> = (0..3)
        .map(|i| baseline_request("batched_classifier", i).inputs[0].data.to_f64_vec())
        .collect();
    let body = serde_json::json!({
        "id": "batch-3",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [3, 8], "data": rows}],
    });
    let response =
        server.post_json("/v2/models/batched_classifier/infer", body.to_string().as_bytes()).await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    let json = response.json();
    assert_eq!(json["id"], "batch-3");
    assert_eq!(json["outputs"][0]["shape"], serde_json::json!([3, 3]));
    assert_eq!(json["outputs"][0]["data"].as_array().map(Vec::len), Some(9));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_a_4xx_json_error_naming_the_problem() {
    let test = TestDir::new();
    let runtime = test.runtime("mlp_classifier");
    let server = Server::tcp(Some(Arc::clone(&runtime))).await;
    let row = baseline_request("mlp_classifier", 0).inputs[0].data.to_f64_vec();
    let tensor = |datatype: &str, shape: serde_json::Value, data: serde_json::Value| {
        serde_json::json!({"inputs": [{"name": "features", "datatype": datatype, "shape": shape, "data": data}]})
            .to_string()
    };
    let mut with_string = serde_json::json!(row.clone());
    with_string[3] = "NaN".into();
    let mut with_infinity = serde_json::json!(row.clone());
    with_infinity[0] = "Infinity".into();
    let mut with_null = serde_json::json!(row.clone());
    with_null[5] = serde_json::Value::Null;
    let cases: Vec<(&str, String, u16, Vec<&str>)> = vec![
        ("wrong shape", tensor("FP32", serde_json::json!([2, 4]), serde_json::json!(row.clone())), 400, vec!["shape", "[2, 4]", "[1, 8]"]),
        ("wrong rank", tensor("FP32", serde_json::json!([8]), serde_json::json!(row.clone())), 400, vec!["shape"]),
        ("data does not fill the shape", tensor("FP32", serde_json::json!([1, 8]), serde_json::json!(row[..5].to_vec())), 400, vec!["8 elements", "has 5"]),
        ("wrong datatype", tensor("INT64", serde_json::json!([1, 8]), serde_json::json!(row.clone())), 400, vec!["datatype INT64", "expects FP32"]),
        ("unsupported datatype", tensor("STRING", serde_json::json!([1, 8]), serde_json::json!(row.clone())), 400, vec!["unsupported datatype", "STRING"]),
        ("text for numbers", tensor("BYTES", serde_json::json!([1, 8]), serde_json::json!(vec!["a"; 8])), 400, vec!["datatype BYTES", "expects FP32"]),
        ("NaN as a string", tensor("FP32", serde_json::json!([1, 8]), with_string), 400, vec!["`features`", "element 3", "\"NaN\""]),
        ("infinity as a string", tensor("FP32", serde_json::json!([1, 8]), with_infinity), 400, vec!["element 0", "\"Infinity\""]),
        ("null element", tensor("FP32", serde_json::json!([1, 8]), with_null), 400, vec!["element 5", "null"]),
        ("beyond FP32", tensor("FP32", serde_json::json!([1, 8]), serde_json::json!([1e39, 0, 0, 0, 0, 0, 0, 0])), 400, vec!["not a valid FP32"]),
        ("number beyond f64", r#"{"inputs":[{"name":"features","datatype":"FP32","shape":[1,8],"data":[1e999,0,0,0,0,0,0,0]}]}"#.to_string(), 400, vec!["malformed JSON", "out of range"]),
        ("missing input", serde_json::json!({"inputs": []}).to_string(), 400, vec!["missing input `features`"]),
        ("unknown input", serde_json::json!({"inputs": [{"name": "feature", "datatype": "FP32", "shape": [1, 8], "data": row.clone()}]}).to_string(), 400, vec!["unknown input `feature`", "features"]),
        ("unknown output", serde_json::json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 8], "data": row.clone()}], "outputs": [{"name": "logits"}]}).to_string(), 400, vec!["unknown output `logits`"]),
        ("malformed JSON", "{\"inputs\": [".to_string(), 400, vec!["malformed JSON"]),
        ("not JSON at all", "features=1,2,3".to_string(), 400, vec!["malformed JSON"]),
        ("JSON of another shape", "{\"inputs\": {\"features\": [1]}}".to_string(), 400, vec!["not an inference request"]),
        ("empty body", String::new(), 400, vec!["malformed JSON"]),
    ];
    for (what, body, status, expected) in &cases {
        let response = server.post_json(INFER, body.as_bytes()).await;
        let error = assert_refused(&response, *status, expected);
        eprintln!("{what}: {status} {error}");
    }

    let unknown = server.post_json("/v2/models/resnet/infer", &good_body(0)).await;
    assert_refused(&unknown, 404, &["unknown model `resnet`", "mlp_classifier"]);
    assert_refused(&server.get("/v2/models/resnet").await, 404, &["unknown model"]);
    assert_refused(&server.get("/v2/models/resnet/ready").await, 404, &["unknown model"]);
    assert_refused(
        &server.get("/v2/models/mlp_classifier/versions/9.9.9").await,
        404,
        &["unknown version `9.9.9`"],
    );

    let oversized = format!("{{\"inputs\":[],\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    let response = server.post_json(INFER, oversized.as_bytes()).await;
    assert_refused(&response, 413, &["larger than the limit of 65536 bytes"]);

    let form = http(
        &server.target,
        "POST",
        INFER,
        Some("application/x-www-form-urlencoded"),
        &good_body(0),
    )
    .await;
    assert_refused(&form, 415, &["application/x-www-form-urlencoded", "application/json"]);

    assert_refused(&server.get(INFER).await, 405, &["GET is not allowed"]);
    assert_refused(&server.get("/v1/models").await, 404, &["no such endpoint: /v1/models"]);

    // After all of that, the server still answers, and the window counted the refusals.
    let response = server.post_json(INFER, &good_body(7)).await;
    assert_eq!(response.status, 200);
    let window = runtime.cut_window(0, 1, 1);
    let refusals: u64 = window.errors.values().sum();
    assert_eq!(refusals, cases.len() as u64 + 2, "errors by kind: {:?}", window.errors);
    assert_eq!(window.errors.get("oversized_request"), Some(&1));
    assert_eq!(window.errors.get("unsupported_media_type"), Some(&1));
    assert!(window.errors.get("bad_value").copied().unwrap_or(0) >= 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_are_all_answered() {
    let test = TestDir::new();
    let runtime = test.runtime("mlp_classifier");
    let server = Server::tcp(Some(Arc::clone(&runtime))).await;
    let target = server.target.clone();
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let target = target.clone();
            tokio::spawn(async move {
                for i in 0..15 {
                    let body = good_body((client * 15 + i) % 500);
                    let response =
                        http(&target, "POST", INFER, Some("application/json"), &body).await;
                    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
                    // Health answers while models compute.
                    let live = http(&target, "GET", "/v2/health/live", None, b"").await;
                    assert_eq!(live.status, 200);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("client");
    }
    let window = runtime.cut_window(0, 1, 1);
    assert_eq!(window.count, 120);
    assert!(window.errors.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_serves_the_same_api() {
    let test = TestDir::new();
    let socket = test.path().join("agent.sock");
    let server = Server::start(
        Some(test.runtime("mlp_classifier")),
        ListenAddress::Unix(socket.clone()),
        4 * 1024 * 1024,
    )
    .await;
    assert_eq!(server.get("/v2/health/ready").await.status, 200);
    let response = server.post_json(INFER, &good_body(3)).await;
    assert_eq!(response.status, 200);
    assert_refused(
        &server.post_json(INFER, b"{\"inputs\": 5}").await,
        400,
        &["not an inference request"],
    );
    assert_refused(
        &server.post_json("/v2/models/other/infer", &good_body(3)).await,
        404,
        &["unknown model `other`"],
    );
    server.stop().await;
    assert!(!socket.exists(), "the socket file is removed at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_model_the_agent_is_live_but_not_ready() {
    let server = Server::tcp(None).await;
    assert_eq!(server.get("/v2/health/live").await.status, 200);
    let ready = server.get("/v2/health/ready").await;
    assert_eq!((ready.status, ready.json()["ready"].as_bool()), (503, Some(false)));
    assert_refused(&server.post_json(INFER, &good_body(0)).await, 503, &["no model is loaded"]);
    server.stop().await;
}

const DATATYPES_INFER: &str = "/v2/models/datatypes/infer";

/// The `datatypes` model's golden case `case` as a request body (every input of every
/// datatype) and the outputs it must produce.
fn datatypes_case(test: &TestDir, case: usize) -> (serde_json::Value, Vec<Tensor>) {
    let golden = &test.fixture.verified_bundle("datatypes").golden.cases[case];
    let request = serde_json::json!({ "id": format!("case-{case}"), "inputs": golden.inputs });
    (request, golden.outputs.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn int64_bool_and_bytes_round_trip_exactly_through_rest() {
    let test = TestDir::new();
    let runtime = test.runtime("datatypes");
    let server = Server::tcp(Some(Arc::clone(&runtime))).await;
    let metadata = server.get("/v2/models/datatypes").await.json();
    let declared: Vec<&str> = metadata["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .filter_map(|i| i["datatype"].as_str())
        .collect();
    for datatype in [
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
        "FP32", "FP64", "BYTES",
    ] {
        assert!(declared.contains(&datatype), "{datatype} missing from {declared:?}");
    }
    for case in 0..6 {
        let (request, expected) = datatypes_case(&test, case);
        let response = server.post_json(DATATYPES_INFER, request.to_string().as_bytes()).await;
        assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
        let json = response.json();
        assert_eq!(json["id"], format!("case-{case}"));
        // The very values the reference evaluator computed, in each output's datatype:
        // integers as integers (2^53 + 1 and UINT64's maximum included), booleans, text, floats
        // in their own precision, and printed as the golden set prints them.
        let outputs: Vec<Tensor> =
            serde_json::from_value(json["outputs"].clone()).expect("typed outputs");
        assert_eq!(outputs, expected, "case {case}");
        let text = String::from_utf8_lossy(&response.body);
        let printed = serde_json::to_string(&expected).expect("golden text");
        assert!(text.contains(&printed[1..printed.len() - 1]), "case {case}: {text}");
    }
    let text = String::from_utf8(
        server
            .post_json(DATATYPES_INFER, datatypes_case(&test, 0).0.to_string().as_bytes())
            .await
            .body,
    )
    .expect("utf-8");
    assert!(text.contains("9007199254740994"), "INT64 2^53 + 2 printed exactly: {text}");
    assert!(text.contains("18446744073709551615"), "UINT64 maximum printed exactly: {text}");
    assert!(!text.contains(
        "\"i64_out\",\"datatype\":\"INT64\",\"shape\":[1,2],\"data\":[9007199254740994.0"
    ));
    let window = runtime.cut_window(0, 1, 1);
    assert_eq!(window.count, 7);
    assert!(window.errors.is_empty(), "{:?}", window.errors);
    server.stop().await;
}

/// A request body in the binary tensor data extension: the JSON, then each tensor's bytes.
fn binary_body(json: &serde_json::Value, binary: &[u8]) -> (Vec<u8>, usize) {
    let mut body = json.to_string().into_bytes();
    let length = body.len();
    body.extend_from_slice(binary);
    (body, length)
}

async fn post_binary(server: &Server, body: &[u8], header_length: usize) -> HttpResponse {
    crate::http_with_headers(
        &server.target,
        "POST",
        DATATYPES_INFER,
        &[
            ("Content-Type", "application/octet-stream".to_string()),
            ("Inference-Header-Content-Length", header_length.to_string()),
        ],
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_tensor_data_extension_works_both_ways() {
    use outpost_shared::oip::{Datatype, TensorData, decode_request};
    let test = TestDir::new();
    let runtime = test.runtime("datatypes");
    let server = Server::tcp(Some(Arc::clone(&runtime))).await;
    let golden = test.fixture.verified_bundle("datatypes").golden.cases[5].clone();
    // Every input in binary, every output asked for in binary.
    let mut binary = Vec::new();
    let mut inputs = Vec::new();
    for tensor in &golden.inputs {
        let before = binary.len();
        tensor.data.write_binary(&mut binary);
        inputs.push(serde_json::json!({
            "name": tensor.name, "datatype": tensor.datatype().as_str(), "shape": tensor.shape,
            "parameters": {"binary_data_size": binary.len() - before},
        }));
    }
    let json = serde_json::json!({"id": "bin", "inputs": inputs, "parameters": {"binary_data_output": true}});
    let (body, length) = binary_body(&json, &binary);
    let response = post_binary(&server, &body, length).await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
    assert_eq!(response.content_type.as_deref(), Some("application/octet-stream"));
    let header_length: usize = response
        .header("inference-header-content-length")
        .expect("Inference-Header-Content-Length")
        .parse()
        .expect("a length");
    let answer: serde_json::Value =
        serde_json::from_slice(&response.body[..header_length]).expect("JSON part");
    assert_eq!(answer["id"], "bin");
    let mut at = header_length;
    for (output, expected) in
        answer["outputs"].as_array().expect("outputs").iter().zip(&golden.outputs)
    {
        assert_eq!(output["name"], expected.name.as_str());
        assert!(output.get("data").is_none(), "{output}");
        let size = output["parameters"]["binary_data_size"].as_u64().expect("size") as usize;
        let datatype =
            Datatype::parse(output["datatype"].as_str().expect("datatype")).expect("known");
        let data =
            TensorData::read_binary(datatype, &response.body[at..at + size], expected.data.len())
                .expect("binary output reads");
        assert_eq!(data, expected.data, "output {}", expected.name);
        at += size;
    }
    assert_eq!(at, response.body.len(), "nothing after the last output");
    // The same request decoded in-process gives the same tensors the JSON golden case holds.
    let decoded = decode_request(&body, Some(length), Some(runtime.inputs())).expect("decodes");
    let plain = |tensors: &[Tensor]| -> Vec<(String, Vec<u64>, TensorData)> {
        tensors.iter().map(|t| (t.name.clone(), t.shape.clone(), t.data.clone())).collect()
    };
    assert_eq!(plain(&decoded.inputs), plain(&golden.inputs));

    // Broken binary requests are refused, naming the problem, and counted as client errors.
    let short = post_binary(&server, &body[..body.len() - 1], length).await;
    assert_refused(&short, 400, &["input `s`"]);
    let mut long = body.clone();
    long.extend_from_slice(b"xx");
    assert_refused(&post_binary(&server, &long, length).await, 400, &["2 bytes after"]);
    assert_refused(
        &post_binary(&server, &body, body.len() + 5).await,
        400,
        &["Inference-Header-Content-Length"],
    );
    let json_only = server.post_json(DATATYPES_INFER, json.to_string().as_bytes()).await;
    assert_refused(&json_only, 400, &["no Inference-Header-Content-Length"]);
    let gzip = crate::http_with_headers(
        &server.target,
        "POST",
        DATATYPES_INFER,
        &[("Content-Encoding", "gzip".to_string())],
        &body,
    )
    .await;
    assert_refused(&gzip, 415, &["Content-Encoding `gzip`"]);
    let window = runtime.cut_window(0, 1, 1);
    assert_eq!(window.count, 6);
    assert_eq!(window.errors.values().sum::<u64>(), 5, "{:?}", window.errors);
    assert!(!window.errors.contains_key("runtime"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_queue_for_a_permit_and_are_all_answered() {
    // Sixteen clients send 1 MiB nested-array bodies at once to a server with 2 permits and a
    // 4 MiB limit: every one is answered, row for row, and a body declaring a shape its data
    // cannot fill is refused before anything is reserved for it.
    let test = TestDir::new();
    let runtime = test.runtime("batched_classifier");
    let server = Server::start(
        Some(Arc::clone(&runtime)),
        ListenAddress::Tcp("127.0.0.1:0".parse().expect("addr")),
        4 * 1024 * 1024,
    )
    .await;
    let row: Vec<f64> = baseline_request("batched_classifier", 0).inputs[0].data.to_f64_vec();
    let rows = 1024 * 1024 / serde_json::to_string(&row).expect("row").len();
    let body = serde_json::json!({
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [rows, 8], "data": vec![row.clone(); rows]}],
    })
    .to_string();
    assert!(body.len() > 1_000_000);
    let body = Arc::new(body.into_bytes());
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let target = server.target.clone();
            let body = Arc::clone(&body);
            tokio::spawn(async move {
                http(
                    &target,
                    "POST",
                    "/v2/models/batched_classifier/infer",
                    Some("application/json"),
                    &body,
                )
                .await
            })
        })
        .collect();
    for client in clients {
        let response = client.await.expect("client");
        assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
        assert_eq!(response.json()["outputs"][0]["shape"], serde_json::json!([rows, 3]));
    }
    let huge = serde_json::json!({
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [u64::MAX / 16, 8], "data": row}],
    });
    let refused =
        server.post_json("/v2/models/batched_classifier/infer", huge.to_string().as_bytes()).await;
    assert_refused(&refused, 400, &["holds", "elements but data has 8"]);
    let window = runtime.cut_window(0, 1, 1);
    assert_eq!(window.count, 17);
    assert_eq!(window.errors.get("bad_shape"), Some(&1));
    server.stop().await;
}
